import assert from "node:assert/strict";
import { ClosedError, InvalidArgumentError, Kernel } from "../mod.ts";
import { ownerOf } from "../bindings/_owner.ts";
import { openRing, recordSize, type RingReader, type RingWriter } from "../bindings/_ring.ts";
import {
  diagnostics,
  KREPIS_RING_DIAG_CLOSE_WHEN_DONE,
  KREPIS_RING_DIAG_FILL,
} from "./_diagnostics.ts";
import { libraryPath } from "./_helpers.ts";

const open = () => Kernel.open({ libraryPath: libraryPath(), dataDir: null, workerThreads: 2 });

/** The kernel's diagnostics pattern (ffi/src/diagnostics.rs `pattern_byte`). */
const patternByte = (sequence: number, index: number) =>
  Math.imul(((sequence & 0xff) + index) & 0xff, 31) & 0xff;

function reader(kernel: Kernel, capacity: number): RingReader {
  return openRing(ownerOf(kernel), { capacity, direction: "toJs" });
}

function writer(kernel: Kernel, capacity: number): RingWriter {
  return openRing(ownerOf(kernel), { capacity, direction: "toKernel" });
}

function produce(kernel: Kernel, ring: RingReader, count: number, length: number, flags: number) {
  const { native } = ownerOf(kernel);
  native.check(
    diagnostics().krepis_ring_debug_produce(
      (ring as unknown as { handle: number }).handle,
      count,
      length,
      flags,
    ),
  );
}

function consume(kernel: Kernel, ring: RingWriter, flags: number) {
  const { native } = ownerOf(kernel);
  native.check(
    diagnostics().krepis_ring_debug_consume((ring as unknown as { handle: number }).handle, flags),
  );
}

/** Drains until `count` records arrived, checking order, tags and pattern. */
async function receiveAll(ring: RingReader, count: number, length: number, fill: boolean) {
  let next = 0;
  while (next < count) {
    ring.drain((data, offset, len, tag) => {
      assert.equal(tag, next >>> 0, "records arrive in order");
      assert.equal(len, length);
      if (fill) {
        for (let i = 0; i < len; i++) {
          if (data[offset + i] !== patternByte(next, i)) {
            assert.fail(`record ${next} byte ${i}: ${data[offset + i]} != ${patternByte(next, i)}`);
          }
        }
      }
      next++;
    });
    if (next < count) assert.ok(await ring.wait(5_000), `timed out after ${next} records`);
  }
  return next;
}

Deno.test("kernel → JS: every record length, wrapping at every offset, arrives intact", async () => {
  await using kernel = await open();
  const capacity = 256;
  for (let length = 0; length <= capacity - 8; length++) {
    using ring = reader(kernel, capacity);
    // 40 records sweep the cursor across the ring several times; record sizes
    // that do not divide the ring land the wrap point on every 8-byte offset.
    const count = 40;
    produce(kernel, ring, count, length, KREPIS_RING_DIAG_FILL);
    assert.equal(await receiveAll(ring, count, length, true), count);
  }
});

Deno.test("JS → kernel: every record length, wrapping at every offset, verified by the kernel", async () => {
  await using kernel = await open();
  const capacity = 256;
  for (const length of [0, 1, 7, 8, 9, 15, 16, 17, 24, 100, 120, 121, 128, 200, 247, 248]) {
    using ring = writer(kernel, capacity);
    consume(kernel, ring, KREPIS_RING_DIAG_FILL);
    const count = 64;
    let checksum = 0n;
    for (let sequence = 0; sequence < count; sequence++) {
      const record = new Uint8Array(length);
      for (let i = 0; i < length; i++) {
        record[i] = patternByte(sequence, i);
        checksum += BigInt(record[i]);
      }
      await ring.write(record, sequence);
      ring.flush();
    }
    for (let i = 0; i < 500 && ring.stats().nativeRecords < BigInt(count); i++) {
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    const stats = ring.stats();
    assert.equal(stats.nativeRecords, BigInt(count), `length ${length}`);
    assert.equal(stats.nativeErrors, 0n, `length ${length}: pattern verified by the kernel`);
    assert.equal(stats.nativeChecksum, checksum);
  }
});

Deno.test("a full ring: the JS writer reports would-block, then proceeds when drained", async () => {
  await using kernel = await open();
  using ring = writer(kernel, 1024);
  const record = new Uint8Array(56); // 64 bytes with its header
  let written = 0;
  while (ring.tryWrite(record, written)) written++;
  assert.equal(written, 1024 / 64, "exactly the ring's capacity");
  assert.equal(ring.free, 0);
  ring.flush();
  assert.equal(kernel.stats().buffers.ringUsedBytes, 1024, "occupancy is visible in stats");
  const pending = ring.write(record, written); // waits for space
  let settled = false;
  pending.then(() => (settled = true));
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(settled, false, "the producer waits while the ring is full");
  consume(kernel, ring, 0);
  await pending;
  ring.flush();
  for (let i = 0; i < 500 && ring.stats().nativeRecords < BigInt(written + 1); i++) {
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  assert.equal(ring.stats().nativeRecords, BigInt(written + 1));
});

Deno.test("a full ring: the kernel producer waits for the JS reader (back-pressure)", async () => {
  await using kernel = await open();
  using ring = reader(kernel, 4096);
  produce(kernel, ring, 1000, 56, KREPIS_RING_DIAG_FILL);
  for (let i = 0; i < 200 && ring.available < 4096; i++) {
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  assert.equal(ring.available, 4096, "the ring filled up and the producer stopped");
  assert.equal(ring.stats().nativeRecords, 4096n / 64n);
  assert.equal(await receiveAll(ring, 1000, 56, true), 1000, "nothing was dropped");
});

Deno.test("records exactly ring-size fit; one byte more is a typed error on both sides", async () => {
  await using kernel = await open();
  const capacity = 512;
  using out = writer(kernel, capacity);
  assert.equal(out.maxRecordBytes, capacity - 8);
  consume(kernel, out, KREPIS_RING_DIAG_FILL);
  // Start at a non-zero offset so the exact-size record must wrap (pad + wait).
  await out.write(new Uint8Array([patternByte(0, 0)]), 0);
  const exact = Uint8Array.from({ length: capacity - 8 }, (_, i) => patternByte(1, i));
  await out.write(exact, 1);
  out.flush();
  for (let i = 0; i < 500 && out.stats().nativeRecords < 2n; i++) {
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  assert.equal(out.stats().nativeRecords, 2n);
  assert.equal(out.stats().nativeErrors, 0n);
  assert.throws(
    () => out.tryWrite(new Uint8Array(capacity - 7)),
    (error: unknown) =>
      error instanceof InvalidArgumentError && error.details.reason === "record_too_large",
  );

  using into = reader(kernel, capacity);
  produce(kernel, into, 3, capacity - 8, KREPIS_RING_DIAG_FILL);
  assert.equal(await receiveAll(into, 3, capacity - 8, true), 3);
  assert.throws(
    () => produce(kernel, into, 1, capacity - 7, 0),
    (error: unknown) => error instanceof InvalidArgumentError && /does not fit/.test(error.message),
  );
  assert.equal(recordSize(capacity - 8), capacity);
});

Deno.test("records from the iterator are valid for one iteration only", async () => {
  await using kernel = await open();
  using ring = reader(kernel, 1024);
  produce(kernel, ring, 100, 16, KREPIS_RING_DIAG_FILL | KREPIS_RING_DIAG_CLOSE_WHEN_DONE);
  let previous: { data: unknown } | undefined;
  let count = 0;
  for await (const record of ring) {
    assert.equal(record.tag, count);
    assert.equal(record.data[3], patternByte(count, 3));
    if (previous) assert.throws(() => previous!.data, ClosedError);
    previous = record;
    count++;
  }
  assert.equal(count, 100, "the iterator ends when the kernel closes the ring");
});

Deno.test("close twice, use after close, bad options", async () => {
  await using kernel = await open();
  const ring = reader(kernel, 256);
  const data = ring.data;
  ring.close();
  ring.close();
  assert.equal(data.length, 0, "views are detached");
  assert.throws(() => ring.drain(() => {}), ClosedError);
  assert.throws(() => ring.read(), ClosedError);
  await assert.rejects(ring.wait(), ClosedError);
  for (const capacity of [0, 100, 32, 2 ** 31, 1.5]) {
    assert.throws(
      () => openRing(ownerOf(kernel), { capacity, direction: "toJs" }),
      InvalidArgumentError,
      String(capacity),
    );
  }
  assert.equal(kernel.stats().buffers.liveRings, 0);
});

Deno.test("kernel close with rings outstanding: views detached, waiters released", async () => {
  const kernel = await open();
  const ring = reader(kernel, 4096);
  const data = ring.data;
  const waiting = ring.wait(60_000);
  const out = writer(kernel, 4096);
  assert.equal(kernel.stats().buffers.liveRings, 2);
  await kernel.close();
  assert.equal(await waiting, false, "the pending wait ends instead of hanging");
  assert.equal(data.length, 0);
  assert.equal(out.data.length, 0);
  assert.throws(() => ring.drain(() => {}), ClosedError);
  assert.throws(() => out.tryWrite(new Uint8Array(1)), ClosedError);
  ring.close();
  out.close();
});

Deno.test("waiting gives back the last record, so its view is invalid afterwards", async () => {
  await using kernel = await open();
  using ring = reader(kernel, 256);
  produce(kernel, ring, 1, 8, KREPIS_RING_DIAG_FILL);
  assert.ok(await ring.wait(5_000));
  const record = ring.read()!;
  assert.equal(record.data[0], patternByte(0, 0));
  assert.equal(await ring.wait(10), false, "nothing more yet");
  assert.equal(record.valid, false);
  assert.throws(() => record.data, ClosedError);
});

Deno.test("records published just before the kernel closes the ring are all delivered", async () => {
  await using kernel = await open();
  using ring = reader(kernel, 4096);
  produce(kernel, ring, 5, 8, KREPIS_RING_DIAG_CLOSE_WHEN_DONE);
  for (let i = 0; i < 500 && !ring.closed; i++) await new Promise((r) => setTimeout(r, 2));
  assert.ok(ring.closed, "the kernel closed its side");
  let count = 0;
  for await (const _ of ring) count++;
  assert.equal(count, 5);
});

Deno.test("overlapping waits: a timed-out wait does not swallow another's wake-up", async () => {
  await using kernel = await open();
  using ring = reader(kernel, 256);
  const started = performance.now();
  const long = ring.wait(10_000);
  const short = ring.wait(30);
  assert.equal(await short, false);
  produce(kernel, ring, 1, 8, 0);
  assert.equal(await long, true);
  assert.ok(performance.now() - started < 5_000, "woken by the record, not by the timeout");
});

Deno.test("kernel close while iterating ends the iteration cleanly", async () => {
  const kernel = await open();
  const ring = reader(kernel, 256);
  const iteration = (async () => {
    let count = 0;
    for await (const _ of ring) count++;
    return count;
  })();
  await new Promise((resolve) => setTimeout(resolve, 20));
  await kernel.close();
  assert.equal(await iteration, 0);
});

Deno.test("a ring's views keep its memory alive after the ring object is gone", async () => {
  const gc = (globalThis as { gc?: () => void }).gc!;
  await using kernel = await open();
  const view = (() => {
    const ring = reader(kernel, 4096);
    return ring.data; // the RingReader itself becomes garbage
  })();
  for (let i = 0; i < 10; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  assert.equal(kernel.stats().buffers.liveRings, 1, "not freed while a view is reachable");
  assert.equal(view.length, 4096);
});

Deno.test("only one kernel-side producer per ring", async () => {
  await using kernel = await open();
  using ring = reader(kernel, 256);
  produce(kernel, ring, 1, 8, 0);
  assert.throws(() => produce(kernel, ring, 1, 8, 0), /single-producer/);
});
