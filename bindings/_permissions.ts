/**
 * FFI bypasses Deno's permission model, so the SDK checks the permission an
 * operation would need *before* the kernel acts, exactly as a built-in Deno
 * API would (including the interactive prompt when Deno would show one).
 *
 * @module
 */

import { PermissionError } from "./errors.ts";

/**
 * Throws a {@linkcode PermissionError} naming `flag` unless `descriptor` is
 * granted. `action` says what needed it ("opening the data dir /x").
 */
export function requirePermission(
  descriptor: Deno.PermissionDescriptor,
  action: string,
  flag: string,
): void {
  let state = Deno.permissions.querySync(descriptor).state;
  if (state === "prompt") state = Deno.permissions.requestSync(descriptor).state;
  if (state !== "granted") {
    throw new PermissionError(
      `${action} needs the Deno permission ${flag} (it is ${state}); run Deno with ${flag}`,
      { details: { permission: descriptor.name, flag } },
    );
  }
}

/** True when `descriptor` is granted, without prompting. */
export function hasPermission(descriptor: Deno.PermissionDescriptor): boolean {
  return Deno.permissions.querySync(descriptor).state === "granted";
}
