/**
 * Kernel lifecycle and control-plane round trip.
 *
 * - `Kernel.open` + `close` (2 workers, no data dir): wall time per cycle.
 * - `kernel.stats()`: one FFI call + protobuf decode, and the raw FFI call
 *   alone, next to the cheapest public Deno op (`performance.now()`, a fast
 *   op) and a Deno op returning a small record (`Deno.memoryUsage()`).
 *
 * Run: `deno task bench:kernel`.
 *
 * @module
 */

import { Kernel } from "../mod.ts";
import { loadLibrary } from "../bindings/_loader.ts";
import { compareNsPerOp, libraryPath, median, ratio, report } from "./_harness.ts";

const libraryOptions = { libraryPath: libraryPath() };

// Open + close.
await (await Kernel.open({ ...libraryOptions, dataDir: null })).close(); // load once
const cycles: number[] = [];
for (let i = 0; i < 60; i++) {
  const start = performance.now();
  const kernel = await Kernel.open({ ...libraryOptions, workerThreads: 2, dataDir: null });
  await kernel.close();
  cycles.push((performance.now() - start) * 1000);
}
report("kernel_open_close", median(cycles), "us");

// Control-plane round trip.
await using kernel = await Kernel.open({ ...libraryOptions, workerThreads: 2, dataDir: null });
const native = await loadLibrary(libraryOptions);
const scratch = new Uint8Array(256);
const statsHandle = (() => {
  // The raw call needs the kernel's handle: open a second one through the symbol.
  const out = new Uint32Array(1);
  native.check(native.symbols.krepis_kernel_open(new Uint8Array(0), 0, null, out));
  return out[0];
})();
const ns = compareNsPerOp({
  stats: () => kernel.stats(),
  statsRawFfi: () => native.symbols.krepis_kernel_stats(statsHandle, scratch, scratch.length),
  performanceNow: () => performance.now(),
  memoryUsage: () => Deno.memoryUsage(),
}, 20_000);
native.check(native.symbols.krepis_kernel_close(statsHandle));

report("stats_roundtrip", ns.stats, "ns");
report("stats_raw_ffi", ns.statsRawFfi, "ns");
report("deno_empty_op_performance_now", ns.performanceNow, "ns");
report("deno_op_memory_usage", ns.memoryUsage, "ns");
// Rates: ours ÷ anchor (> 1: our call is cheaper).
ratio("stats_raw_ffi_vs_empty_op", 1 / ns.statsRawFfi, 1 / ns.performanceNow);
ratio("stats_roundtrip_vs_empty_op", 1 / ns.stats, 1 / ns.performanceNow);
ratio("stats_roundtrip_vs_memory_usage", 1 / ns.stats, 1 / ns.memoryUsage);
