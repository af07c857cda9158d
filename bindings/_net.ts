/**
 * What the two network capabilities (transport, http) share: the address
 * type they report and the net permission check they make before the kernel
 * binds or connects (FFI bypasses Deno's own check).
 *
 * @module
 */

import { requirePermission } from "./_permissions.ts";

/** A network address. */
export interface NetAddr {
  /** IP address (as the kernel bound or saw it). */
  hostname: string;
  /** Port (UDP for KNUL, TCP for HTTP). */
  port: number;
}

/** Throws a `PermissionError` unless `--allow-net` covers `host` (`name` or `name:port`). */
export function requireNetPermission(host: string, action: string): void {
  requirePermission({ name: "net", host }, action, `--allow-net=${host}`);
}
