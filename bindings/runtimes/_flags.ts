/**
 * A runtime's permissions, typed, turned into exactly the Deno flags they
 * name (never `-A`, always `--no-prompt`, `--allow-ffi` only when asked)
 * and into the guard's layers that mirror them: Landlock read/write sets
 * from the same paths, the network on only when `net` names hosts.
 *
 * @module
 */

import { checkStringList, invalidArgument } from "../_check.ts";

/**
 * What a runtime's Deno may do: each list becomes one `--allow-*` flag
 * (absent or empty: denied). Paths are absolute.
 *
 * @example
 * ```ts
 * import type { RuntimePermissions } from "@krepis/sdk";
 * const permissions: RuntimePermissions = {
 *   read: ["/srv/data/tenant-a"],
 *   net: ["api.example.com:443"],
 *   env: ["TZ"],
 * };
 * ```
 */
export interface RuntimePermissions {
  /** `--allow-read`: paths (the guard's Landlock read set mirrors them). */
  read?: string[];
  /** `--allow-write`: paths (the guard's Landlock write set mirrors them). */
  write?: string[];
  /** `--allow-net`: `host[:port]` entries; the guard's network is off without any. */
  net?: string[];
  /** `--allow-env`: variable names; their values come from `env` or the parent's environment. */
  env?: string[];
  /** `--allow-run`: programs (what they do is still inside the guard's sandbox). */
  run?: string[];
  /** `--allow-ffi`: library paths; only when given. */
  ffi?: string[];
  /** `--allow-sys`: `Deno` system APIs such as `hostname`, `osRelease`. */
  sys?: string[];
}

/** The variable that tells the child module the channel's message bound. */
export const MAX_MESSAGE_ENV = "KREPIS_RUNTIME_MAX_MESSAGE_BYTES";

function absolutePaths(field: string, value: unknown): string[] {
  const paths = checkStringList(field, value);
  for (const path of paths) {
    if (!/^(\/|[A-Za-z]:[\\/])/.test(path)) {
      invalidArgument(field, `must hold absolute paths, got "${path}"`);
    }
  }
  return paths;
}

function flagList(field: string, values: string[]): string {
  const bad = values.find((value) => value === "" || value.includes(",") || value.includes("\0"));
  if (bad !== undefined) {
    invalidArgument(field, `entries must be non-empty, without commas, got "${bad}"`);
  }
  return values.join(",");
}

/** The checked permissions and the Deno flags they give. */
export interface DenoPermissionFlags {
  flags: string[];
  read: string[];
  write: string[];
  net: string[];
  env: string[];
  run: string[];
  ffi: string[];
}

/**
 * The exact `deno run` permission flags of `permissions`.
 *
 * @throws {InvalidArgumentError} naming the wrong field.
 */
export function denoPermissionFlags(
  permissions: RuntimePermissions | undefined,
): DenoPermissionFlags {
  const given = permissions ?? {};
  if (typeof given !== "object" || given === null) {
    invalidArgument("permissions", "must be an object");
  }
  const known = ["read", "write", "net", "env", "run", "ffi", "sys"];
  const unknown = Object.keys(given).find((key) => !known.includes(key));
  if (unknown !== undefined) {
    invalidArgument(`permissions.${unknown}`, `is not a permission (${known.join(", ")})`);
  }
  const read = absolutePaths("permissions.read", given.read);
  const write = absolutePaths("permissions.write", given.write);
  const ffi = absolutePaths("permissions.ffi", given.ffi);
  const net = checkStringList("permissions.net", given.net);
  const env = checkStringList("permissions.env", given.env);
  const badName = env.find((name) => !/^[A-Za-z_][A-Za-z0-9_]*$/.test(name));
  if (badName !== undefined) {
    invalidArgument("permissions.env", `must hold variable names, got "${badName}"`);
  }
  const run = checkStringList("permissions.run", given.run);
  const sys = checkStringList("permissions.sys", given.sys);
  const flags = ["--no-prompt"];
  const add = (name: string, field: string, values: string[]) => {
    if (values.length > 0) flags.push(`--allow-${name}=${flagList(field, values)}`);
  };
  add("read", "permissions.read", read);
  add("write", "permissions.write", write);
  add("net", "permissions.net", net);
  add("env", "permissions.env", [MAX_MESSAGE_ENV, ...env]);
  add("run", "permissions.run", run);
  add("ffi", "permissions.ffi", ffi);
  add("sys", "permissions.sys", sys);
  return { flags, read, write, net, env, run, ffi };
}
