/**
 * Tiny benchmark harness. These machines are noisy, so every figure is the
 * median of several rounds and every comparison runs the anchor in the same
 * process, interleaved with ours.
 *
 * Output, one figure per line (scripts read it):
 *   `<metric> <value> <unit>`
 *   `ratio <metric> <value>`   (ours ÷ anchor, > 1 means we win)
 *
 * @module
 */

/** Median of some numbers. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Median nanoseconds per call of `fn` over `rounds` rounds of `batch` calls. */
export function nsPerOp(fn: () => unknown, batch: number, rounds = 9): number {
  for (let i = 0; i < batch; i++) fn(); // warm up (JIT, caches)
  const samples: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const start = performance.now();
    for (let i = 0; i < batch; i++) fn();
    samples.push(((performance.now() - start) * 1e6) / batch);
  }
  return median(samples);
}

/** Median nanoseconds per call of several functions, measured interleaved. */
export function compareNsPerOp(
  fns: Record<string, () => unknown>,
  batch: number,
  rounds = 9,
): Record<string, number> {
  const samples: Record<string, number[]> = {};
  for (const [name, fn] of Object.entries(fns)) {
    samples[name] = [];
    for (let i = 0; i < batch; i++) fn();
  }
  for (let round = 0; round < rounds; round++) {
    for (const [name, fn] of Object.entries(fns)) {
      const start = performance.now();
      for (let i = 0; i < batch; i++) fn();
      samples[name].push(((performance.now() - start) * 1e6) / batch);
    }
  }
  return Object.fromEntries(Object.entries(samples).map(([name, s]) => [name, median(s)]));
}

/** Prints `<metric> <value> <unit>`. */
export function report(metric: string, value: number, unit: string): void {
  console.log(`${metric} ${Number(value.toPrecision(4))} ${unit}`);
}

/** Prints `ratio <metric> <value>`; `ours` and `anchor` are rates (higher is better). */
export function ratio(metric: string, ours: number, anchor: number): void {
  console.log(`ratio ${metric} ${Number((ours / anchor).toPrecision(3))}`);
}

/** The local kernel library (set by `deno task bench`). */
export function libraryPath(): string {
  const path = Deno.env.get("KREPIS_LIBRARY_PATH");
  if (!path) throw new Error("KREPIS_LIBRARY_PATH is not set: run `deno task bench`");
  return path;
}
