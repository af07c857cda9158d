/**
 * Spawn-to-exit latency of `true` under the guard (every isolation layer the
 * host allows) vs `Deno.Command` in the same run. Median of 50 runs each,
 * interleaved. Target: guard ≤ 2× Deno.Command.
 *
 * Run: `deno task bench:guard`.
 *
 * @module
 */

import { Kernel } from "../mod.ts";
import { libraryPath, median, ratio, report } from "./_harness.ts";

const TRUE = Deno.build.os === "windows" ? Deno.execPath() : "/bin/true";
const ARGS = Deno.build.os === "windows" ? ["--version"] : [];
const RUNS = 50;

await using kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
const guarded: number[] = [];
const plain: number[] = [];
for (let i = 0; i < 5; i++) {
  await kernel.guard.run({ cmd: TRUE, args: ARGS });
  await new Deno.Command(TRUE, { args: ARGS }).output();
}
for (let i = 0; i < RUNS; i++) {
  let start = performance.now();
  const result = await kernel.guard.run({ cmd: TRUE, args: ARGS, policy: { timeoutMs: 10_000 } });
  guarded.push(performance.now() - start);
  if (result.code !== 0) throw new Error(`guarded true failed: ${JSON.stringify(result)}`);
  start = performance.now();
  await new Deno.Command(TRUE, { args: ARGS, stdout: "piped", stderr: "piped" }).output();
  plain.push(performance.now() - start);
}
report("guard_spawn_to_exit", median(guarded) * 1000, "us");
report("deno_command_spawn_to_exit", median(plain) * 1000, "us");
// Rates: > 1 means the guard is faster; the target is ≥ 0.5 (at most 2× slower).
ratio("guard_vs_deno_command", 1 / median(guarded), 1 / median(plain));
