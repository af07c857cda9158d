import assert from "node:assert/strict";
import { ClosedError, InvalidArgumentError, Kernel, MAX_BUFFER_BYTES } from "../mod.ts";
import { ownerOf } from "../bindings/_owner.ts";
import { diagnostics } from "./_diagnostics.ts";
import { libraryPath } from "./_helpers.ts";

const open = (options: Record<string, unknown> = {}) =>
  Kernel.open({ libraryPath: libraryPath(), dataDir: null, workerThreads: 2, ...options });

function kernelSum(kernel: Kernel, handle: number, offset: number, length: number): bigint {
  const { native } = ownerOf(kernel);
  const out = new BigUint64Array(1);
  native.check(diagnostics().krepis_buffer_debug_sum(handle, offset, length, out));
  return out[0];
}

Deno.test("alloc: zeroed kernel memory that JS writes and the kernel reads in place", async () => {
  await using kernel = await open();
  using buffer = kernel.buffers.alloc(4096);
  assert.equal(buffer.byteLength, 4096);
  assert.equal(buffer.bytes.length, 4096);
  assert.ok(buffer.bytes.every((byte) => byte === 0));
  assert.equal(buffer.bytes, buffer.bytes, "the same view every time");
  let sum = 0n;
  for (let i = 0; i < 4096; i++) {
    buffer.bytes[i] = (i * 7) & 0xff;
    sum += BigInt((i * 7) & 0xff);
  }
  assert.equal(kernelSum(kernel, buffer.handle, 0, 4096), sum);
  buffer.bytes[100] = 0;
  assert.equal(kernelSum(kernel, buffer.handle, 100, 1), 0n, "no stale copy anywhere");
  assert.throws(
    () => kernelSum(kernel, buffer.handle, 4000, 97),
    (error: unknown) =>
      error instanceof InvalidArgumentError && /outside the buffer/.test(error.message),
  );
  const stats = kernel.stats().buffers;
  assert.equal(stats.liveBuffers, 1);
  assert.equal(stats.liveBytes, 4096);
});

Deno.test("alloc: bad lengths are InvalidArgumentError, 0 is allowed", async () => {
  await using kernel = await open();
  for (const bad of [-1, 1.5, NaN, MAX_BUFFER_BYTES + 1, "8", null, undefined]) {
    assert.throws(
      () => kernel.buffers.alloc(bad as number),
      (error: unknown) =>
        error instanceof InvalidArgumentError && error.details.field === "byteLength",
      String(bad),
    );
  }
  using empty = kernel.buffers.alloc(0);
  assert.equal(empty.bytes.length, 0);
});

Deno.test("release: idempotent; views are detached; use after release is ClosedError", async () => {
  await using kernel = await open();
  const buffer = kernel.buffers.alloc(64);
  const view = buffer.bytes;
  const alias = new Uint8Array(view.buffer, 8, 8);
  view.fill(0xab);
  const handle = buffer.handle;
  buffer.release();
  buffer.release(); // twice: no-op
  assert.equal(buffer.released, true);
  assert.equal(buffer.byteLength, 0);
  assert.equal(view.length, 0, "the view handed out earlier is empty");
  assert.equal(alias.length, 0, "views the app derived are empty too");
  assert.equal(view[0], undefined, "reads nothing");
  view[0] = 1; // a write goes nowhere
  assert.throws(() => buffer.bytes, ClosedError);
  assert.throws(() => buffer.handle, ClosedError);
  // The native handle is dead: the kernel refuses it.
  assert.throws(() => kernelSum(kernel, handle, 0, 1), ClosedError);
  assert.equal(kernel.stats().buffers.liveBuffers, 0);
});

Deno.test("kernel close releases every buffer and detaches views", async () => {
  const kernel = await open();
  const buffers = Array.from({ length: 4 }, () => kernel.buffers.alloc(64 << 20));
  for (const buffer of buffers) buffer.bytes.fill(1); // touch: resident
  const views = buffers.map((buffer) => buffer.bytes);
  const rssBefore = Deno.memoryUsage().rss;
  assert.equal(kernel.stats().buffers.liveBytes, 4 * (64 << 20));
  await kernel.close();
  const rssAfter = Deno.memoryUsage().rss;
  console.log(
    `rss with 256 MiB of buffers ${rssBefore >> 20} MiB, after close ${rssAfter >> 20} MiB`,
  );
  for (const [index, buffer] of buffers.entries()) {
    assert.equal(views[index].length, 0);
    assert.equal(buffer.released, true);
    assert.throws(() => buffer.bytes, ClosedError);
    buffer.release(); // harmless after close
  }
  assert.ok(rssBefore - rssAfter > 200 << 20, "the kernel's memory was returned");
  assert.throws(() => kernel.buffers.alloc(1), ClosedError);
});

Deno.test("forgotten buffers are freed by the GC safety net and counted as leaks", async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) {
    throw new Error("run deno test with --v8-flags=--expose-gc (deno task test)");
  }
  await using kernel = await open();
  (() => {
    for (let i = 0; i < 16; i++) kernel.buffers.alloc(1024).bytes[0] = i;
  })();
  assert.equal(kernel.stats().buffers.liveBuffers, 16);
  for (let attempt = 0; attempt < 100 && kernel.stats().buffers.leakedBuffers < 16; attempt++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const stats = kernel.stats().buffers;
  assert.equal(stats.leakedBuffers, 16);
  assert.equal(stats.liveBuffers, 0);
});

Deno.test("a view kept alive keeps its buffer alive (no use-after-free by the GC net)", async () => {
  const gc = (globalThis as { gc?: () => void }).gc!;
  await using kernel = await open();
  const view = (() => {
    const buffer = kernel.buffers.alloc(32);
    buffer.bytes.fill(7);
    return buffer.bytes; // the SharedBuffer object itself is dropped
  })();
  for (let i = 0; i < 10; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  assert.equal(kernel.stats().buffers.liveBuffers, 1, "still alive while its view is");
  assert.equal(view.length, 32);
  assert.ok(view.every((byte) => byte === 7));
});

Deno.test("1,000,000 alloc/release cycles keep RSS stable", async () => {
  await using kernel = await open();
  // Like an application, yield to the event loop now and then: JS keeps the
  // targets of new WeakRefs (used to detach views on kernel close) alive
  // until the current job ends.
  const cycles = async (count: number) => {
    for (let i = 0; i < count; i++) {
      const buffer = kernel.buffers.alloc(64);
      buffer.bytes[0] = i & 0xff;
      buffer.release();
      if (i % 10_000 === 9_999) await new Promise((resolve) => setTimeout(resolve, 0));
    }
  };
  const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
  const rssMiB = () => {
    gc();
    return Deno.memoryUsage().rss / 2 ** 20;
  };
  await cycles(200_000); // let the JS heap reach its working size
  const checkpoints = [rssMiB()];
  const start = performance.now();
  for (let quarter = 0; quarter < 4; quarter++) {
    await cycles(250_000);
    checkpoints.push(rssMiB());
  }
  const elapsed = performance.now() - start;
  console.log(
    `1M alloc/release: rss every 250k cycles ${
      checkpoints.map((mib) => mib.toFixed(1)).join(" → ")
    } MiB, ` +
      `${(elapsed * 1000 / 1e6).toFixed(2)} us/cycle`,
  );
  const stats = kernel.stats().buffers;
  assert.equal(stats.liveBuffers, 0);
  assert.equal(stats.liveBytes, 0);
  assert.equal(ownerOf(kernel).mappedCount, 0);
  // The JS heap may still settle during the first quarter; after that RSS
  // must be flat (a leak of even 32 bytes per cycle would add ~24 MiB).
  const plateau = checkpoints[4] - checkpoints[1];
  assert.ok(plateau < 16, `RSS grew by ${plateau.toFixed(1)} MiB over the last 750k cycles`);
  assert.ok(checkpoints[4] - checkpoints[0] < 64, "no runaway growth");
});

Deno.test("kernel memory cannot be transferred; if it escapes anyway it is never freed", async () => {
  await using kernel = await open();
  using guarded = kernel.buffers.alloc(16);
  assert.throws(() => guarded.bytes.buffer.transfer(), TypeError);
  assert.throws(() => guarded.bytes.buffer.transferToFixedLength(), TypeError);

  const buffer = kernel.buffers.alloc(16);
  buffer.bytes.fill(9);
  // A transfer list bypasses the guard: the SDK can no longer detach the memory.
  const moved = structuredClone(buffer.bytes.buffer, { transfer: [buffer.bytes.buffer] });
  const warn = console.warn;
  console.warn = () => {};
  try {
    buffer.release();
  } finally {
    console.warn = warn;
  }
  assert.equal(kernel.stats().buffers.abandonedBuffers, 1);
  assert.ok(
    new Uint8Array(moved).every((byte) => byte === 9),
    "the moved view still reads valid memory",
  );
});
