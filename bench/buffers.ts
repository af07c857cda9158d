/**
 * The data plane: records from a kernel (Rust) producer task to a JS consumer
 * through a ring, for 64 B, 4 KiB and 1 MiB records, next to two anchors run
 * in the same process:
 *
 * (a) one `Deno.UnsafeCallback.threadSafe` call per record (a Rust thread
 *     calls into JS for each record), and
 * (b) the same ring, but JS copies each record out with
 *     `Deno.UnsafePointerView.copyInto` instead of reading it in place.
 *
 * The producer stamps each record (header + sequence) without filling the
 * payload, so the figures are the cost of the handoff itself; the consumer
 * reads a byte of every record. Median of 5 runs each.
 *
 * Run: `deno task bench:buffers`.
 *
 * @module
 */

import { Kernel } from "../mod.ts";
import { ownerOf } from "../bindings/_owner.ts";
import { openRing, type RingReader } from "../bindings/_ring.ts";
import { diagnostics } from "../tests/_diagnostics.ts";
import { libraryPath, median, ratio, report } from "./_harness.ts";

await using kernel = await Kernel.open({
  libraryPath: libraryPath(),
  dataDir: null,
  workerThreads: 1,
});
const owner = ownerOf(kernel);
const { native } = owner;
const RUNS = 5;

const handleOf = (ring: RingReader) => (ring as unknown as { handle: number }).handle;

function produce(ring: RingReader, count: number, length: number): void {
  native.check(diagnostics().krepis_ring_debug_produce(handleOf(ring), count, length, 0));
}

/** Records/s: the kernel produces `count` records, JS drains them all with `visit`. */
async function drainRun(
  ring: RingReader,
  count: number,
  length: number,
  visit: (data: Uint8Array, offset: number) => void,
): Promise<number> {
  let received = 0;
  const start = performance.now();
  produce(ring, count, length);
  while (received < count) {
    received += ring.drain(visit);
    if (received < count && ring.available === 0) await ring.wait(10_000);
  }
  return count / ((performance.now() - start) / 1000);
}

/** Records/s through the ring, reading in place. */
async function ringRun(capacity: number, count: number, length: number): Promise<number> {
  using ring = openRing(owner, { capacity, direction: "toJs" });
  let checksum = 0;
  const rate = await drainRun(ring, count, length, (data, offset) => {
    checksum += data[offset];
  });
  if (checksum < 0) throw new Error("unreachable: keeps the read alive");
  return rate;
}

/** Anchor (b): the same ring, each record copied out with copyInto. */
async function copyRun(capacity: number, count: number, length: number): Promise<number> {
  using ring = openRing(owner, { capacity, direction: "toJs" });
  const base = Deno.UnsafePointer.of(ring.data)!;
  const target = new Uint8Array(Math.max(length, 1));
  const into = target.subarray(0, length);
  let checksum = 0;
  const rate = await drainRun(ring, count, length, (_data, offset) => {
    Deno.UnsafePointerView.copyInto(base, into, offset);
    checksum += target[0];
  });
  if (checksum < 0) throw new Error("unreachable: keeps the copy alive");
  return rate;
}

/** Anchor (a): one thread-safe callback call per record. */
async function callbackRun(count: number, length: number): Promise<number> {
  let received = 0;
  let done: () => void = () => {};
  const finished = new Promise<void>((resolve) => (done = resolve));
  const callback = Deno.UnsafeCallback.threadSafe(
    { parameters: ["u32", "u32"], result: "void" } as const,
    (sequence: number) => {
      received++;
      if (sequence === count - 1) done();
    },
  );
  const start = performance.now();
  native.check(diagnostics().krepis_debug_callback_per_record(callback.pointer, count, length));
  await finished;
  const seconds = (performance.now() - start) / 1000;
  callback.close();
  if (received !== count) throw new Error(`callback anchor got ${received} of ${count}`);
  return count / seconds;
}

async function medianRate(run: () => Promise<number>): Promise<number> {
  await run(); // warm up
  const rates: number[] = [];
  for (let i = 0; i < RUNS; i++) rates.push(await run());
  return median(rates);
}

const cases = [
  { name: "64B", length: 64, capacity: 1 << 20, count: 4_000_000, copyCount: 1_000_000 },
  { name: "4KiB", length: 4096, capacity: 1 << 22, count: 400_000, copyCount: 100_000 },
  { name: "1MiB", length: 1 << 20, capacity: 1 << 24, count: 20_000, copyCount: 400 },
];

const callbackRate = await medianRate(() => callbackRun(20_000, 64));
report("anchor_callback_per_record_64B", callbackRate, "records/s");

for (const { name, length, capacity, count, copyCount } of cases) {
  const rate = await medianRate(() => ringRun(capacity, count, length));
  const copyRate = await medianRate(() => copyRun(capacity, copyCount, length));
  report(`ring_${name}`, rate, "records/s");
  report(`ring_${name}_per_record`, 1e9 / rate, "ns");
  report(`ring_${name}_bandwidth`, (rate * length) / 1e9, "GB/s");
  report(`anchor_copyinto_${name}`, copyRate, "records/s");
  report(`anchor_copyinto_${name}_bandwidth`, (copyRate * length) / 1e9, "GB/s");
  ratio(`ring_${name}_vs_copyinto`, rate, copyRate);
  ratio(`ring_${name}_vs_callback_per_record`, rate, callbackRate);
}
