import assert from "node:assert/strict";
import {
  ClosedError,
  InvalidArgumentError,
  IoError,
  Kernel,
  KrepisError,
  NativePanicError,
  VERSION,
} from "../mod.ts";
import { loadLibrary } from "../bindings/_loader.ts";
import { ABI_HASH } from "../bindings/_gen/symbols.ts";
import { KernelConfig } from "../bindings/_gen/proto/krepis/v1/kernel.ts";
import { libraryPath, tempDir, threadNames, threadsLeft } from "./_helpers.ts";
import { diagnostics } from "./_diagnostics.ts";

const libraryOptions = { libraryPath: libraryPath() };

Deno.test("open reports version, ABI hash and stats; close is idempotent", async () => {
  using dir = tempDir();
  const kernel = await Kernel.open({ ...libraryOptions, workerThreads: 2, dataDir: dir.path });
  assert.equal(kernel.version, VERSION);
  assert.equal(kernel.abiHash, ABI_HASH);
  const stats = kernel.stats();
  assert.equal(stats.workerThreads, 2);
  assert.equal(stats.version, VERSION);
  assert.equal(stats.dataDir, dir.path);
  assert.ok(stats.openKernels >= 1);
  assert.ok(stats.uptimeMs >= 0);
  assert.equal(kernel.closed, false);
  await kernel.close();
  assert.equal(kernel.closed, true);
  await kernel.close(); // idempotent
  assert.throws(() => kernel.stats(), ClosedError);
});

Deno.test("await using closes the kernel", async () => {
  let escaped: Kernel;
  {
    await using kernel = await Kernel.open({ ...libraryOptions, dataDir: null });
    escaped = kernel;
    assert.equal(kernel.stats().dataDir, null);
  }
  assert.equal(escaped.closed, true);
  assert.throws(() => escaped.stats(), ClosedError);
});

Deno.test("kernels are independent and counted", async () => {
  const a = await Kernel.open({ ...libraryOptions, workerThreads: 1, dataDir: null });
  const b = await Kernel.open({ ...libraryOptions, workerThreads: 3, dataDir: null });
  const before = a.stats().openKernels;
  assert.notEqual(a.stats().kernelId, b.stats().kernelId);
  assert.equal(b.stats().workerThreads, 3);
  await b.close();
  assert.equal(a.stats().openKernels, before - 1);
  await a.close();
});

Deno.test("the data dir is created, and a file in its place is a typed error", async () => {
  using dir = tempDir();
  const nested = `${dir.path}/a/b/.krepis`;
  const kernel = await Kernel.open({ ...libraryOptions, dataDir: nested });
  assert.ok(Deno.statSync(nested).isDirectory);
  await kernel.close();
  const file = `${dir.path}/file`;
  Deno.writeTextFileSync(file, "not a dir");
  await assert.rejects(Kernel.open({ ...libraryOptions, dataDir: file }), IoError);
  assert.equal(Deno.readTextFileSync(file), "not a dir", "nothing overwritten");
});

Deno.test("wrong option types and ranges are InvalidArgumentError naming the field", async () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ workerThreads: "4" }, "workerThreads"],
    [{ workerThreads: 0 }, "workerThreads"],
    [{ workerThreads: 1.5 }, "workerThreads"],
    [{ workerThreads: 257 }, "workerThreads"],
    [{ shutdownGraceMs: -1 }, "shutdownGraceMs"],
    [{ dataDir: 42 }, "dataDir"],
    [{ dataDir: "" }, "dataDir"],
    [{ dataDir: new URL("https://example.com/x") }, "dataDir"],
  ];
  for (const [options, field] of cases) {
    await assert.rejects(
      Kernel.open({ ...libraryOptions, ...options } as never),
      (error: unknown) => {
        assert.ok(error instanceof InvalidArgumentError, `${JSON.stringify(options)}`);
        assert.equal(error.code, "INVALID_ARGUMENT");
        assert.equal(error.details.field, field);
        assert.match(error.message, new RegExp(field));
        return true;
      },
    );
  }
  // deno-lint-ignore no-explicit-any
  await assert.rejects(Kernel.open(null as any), InvalidArgumentError);
});

Deno.test("bad config bytes at the boundary are a typed error, not a crash", async () => {
  const native = await loadLibrary(libraryOptions);
  const out = new Uint32Array(1);
  const garbage = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f, 0x08]);
  const status = native.symbols.krepis_kernel_open(garbage, garbage.length, null, out);
  assert.ok(status < 0);
  const error = native.lastError(status);
  assert.ok(error instanceof InvalidArgumentError);
  assert.match(error.message, /not a valid krepis\.v1\.KernelConfig/);
  assert.equal(error.details.operation, "krepis_kernel_open");
  assert.equal(out[0], 0, "no handle was written");
  // Length beyond the buffer is refused by Deno before the call reaches us;
  // a too-large worker count decoded from valid bytes is refused by the kernel.
  const tooMany = KernelConfig.encode({
    workerThreads: 100_000,
    dataDir: "",
    shutdownGraceMs: 0,
    threadName: "",
    store: undefined,
  }).finish();
  const status2 = native.symbols.krepis_kernel_open(tooMany, tooMany.length, null, out);
  assert.ok(native.lastError(status2) instanceof InvalidArgumentError);
  const relative = KernelConfig.encode({
    workerThreads: 1,
    dataDir: "relative/path",
    shutdownGraceMs: 0,
    threadName: "",
    store: undefined,
  }).finish();
  const status3 = native.symbols.krepis_kernel_open(relative, relative.length, null, out);
  assert.match(native.lastError(status3).message, /absolute/);
  // A too-small out buffer for the handle is refused, not overrun.
  const empty = KernelConfig.encode({
    workerThreads: 1,
    dataDir: "",
    shutdownGraceMs: 0,
    threadName: "",
    store: undefined,
  }).finish();
  const status4 = native.symbols.krepis_kernel_open(empty, empty.length, null, null);
  assert.ok(native.lastError(status4) instanceof InvalidArgumentError);
});

Deno.test("forged and closed handles give error statuses, never a crash", async () => {
  const native = await loadLibrary(libraryOptions);
  const out = new Uint8Array(256);
  for (const forged of [0, 1, 0xffffffff, 0x10010005, 0x20000001, 0x7fffffff]) {
    const status = native.symbols.krepis_kernel_stats(forged, out, out.length);
    assert.ok(status < 0, `handle ${forged.toString(16)} must be refused`);
    const error = native.lastError(status);
    assert.ok(error instanceof InvalidArgumentError || error instanceof ClosedError);
    assert.ok(native.symbols.krepis_kernel_close(forged) < 0);
  }
  // A real handle, closed twice through the raw symbol.
  const config = KernelConfig.encode({
    workerThreads: 1,
    dataDir: "",
    shutdownGraceMs: 0,
    threadName: "",
    store: undefined,
  }).finish();
  const handle = new Uint32Array(1);
  assert.equal(native.symbols.krepis_kernel_open(config, config.length, null, handle), 0);
  assert.equal(native.symbols.krepis_kernel_close(handle[0]), 0);
  const status = native.symbols.krepis_kernel_close(handle[0]);
  const error = native.lastError(status);
  assert.ok(error instanceof ClosedError);
  assert.match(error.message, /closed/);
  assert.ok(native.symbols.krepis_kernel_stats(handle[0], out, out.length) < 0);
});

Deno.test("a native panic becomes NativePanicError and the process survives", async () => {
  const native = await loadLibrary(libraryOptions);
  for (let i = 0; i < 3; i++) {
    const status = diagnostics().krepis_debug_panic();
    const error = native.lastError(status);
    assert.ok(error instanceof NativePanicError);
    assert.ok(error instanceof KrepisError);
    assert.equal(error.code, "PANIC");
    assert.match(error.message, /deliberate panic/);
    assert.match(error.details.location ?? "", /diagnostics\.rs/);
  }
  // The kernel still works afterwards.
  await using kernel = await Kernel.open({ ...libraryOptions, dataDir: null });
  assert.equal(kernel.stats().version, VERSION);
});

Deno.test("open/close cycles do not leak kernels or threads", async () => {
  const baseline = await Kernel.open({ ...libraryOptions, dataDir: null });
  const before = baseline.stats().openKernels;
  for (let i = 0; i < 50; i++) {
    const kernel = await Kernel.open({ ...libraryOptions, workerThreads: 2, dataDir: null });
    await kernel.close();
  }
  assert.equal(baseline.stats().openKernels, before);
  await baseline.close();
  if (Deno.build.os === "linux") {
    // Every runtime thread is joined on close: none named "krepis" remain.
    // "krepis-netns" is process-wide by design (it keeps spare network
    // namespaces for the guard, like the loaded library itself): not a kernel's.
    const kernelThreads = await threadsLeft((name) =>
      name.startsWith("krepis") && name !== "krepis-netns"
    );
    assert.equal(kernelThreads.length, 0, threadNames().join(","));
  }
});
