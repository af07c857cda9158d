import assert from "node:assert/strict";
import {
  ClosedError,
  ConflictError,
  CorruptError,
  createContext,
  InvalidArgumentError,
  Kernel,
  LockedError,
  NotFoundError,
  ResourceExhaustedError,
} from "../mod.ts";
import { fixture, libraryPath, tempDir } from "./_helpers.ts";

const text = (bytes: Uint8Array | null | undefined) =>
  bytes == null ? null : new TextDecoder().decode(bytes);
const open = (dataDir: string, options: Record<string, unknown> = {}) =>
  Kernel.open({ libraryPath: libraryPath(), dataDir, workerThreads: 2, ...options });

Deno.test("get/put/delete/has with string and byte keys, and named trees", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const store = kernel.store;
  store.put("a", "1");
  store.put(new Uint8Array([0, 255]), new Uint8Array([7, 8, 9]));
  assert.equal(store.get("a")?.text(), "1");
  assert.deepEqual([...store.getCopy(new Uint8Array([0, 255]))!], [7, 8, 9]);
  assert.equal(store.has("a"), true);
  assert.equal(store.get("missing"), null);
  assert.equal(store.delete("a"), true);
  assert.equal(store.delete("a"), false);
  assert.equal(store.has("a"), false);
  const users = store.tree("users");
  users.put("a", "in users");
  assert.equal(store.get("a"), null, "trees are separate");
  assert.equal(users.get("a")?.text(), "in users");
  assert.equal(store.tree("users"), users, "trees are cached");
  // Empty keys and empty values are ordinary.
  store.put("", "");
  assert.equal(store.get("")?.length, 0);
  assert.equal(store.has(""), true);
});

Deno.test("values are zero-copy views valid until released", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  kernel.store.put("k", "value-1");
  const value = kernel.store.get("k")!;
  const bytes = value.bytes;
  kernel.store.put("k", "value-2"); // the view is a snapshot of the read
  assert.equal(text(bytes as Uint8Array), "value-1");
  value.release();
  value.release();
  assert.throws(() => value.bytes, ClosedError);
  // Thousands of reads roll over slabs; released ones are freed.
  for (let i = 0; i < 5_000; i++) {
    using v = kernel.store.get("k")!;
    assert.equal(v.length, 7);
  }
  assert.ok(kernel.stats().buffers.liveBuffers <= 2, "retired slabs were freed");
});

Deno.test("bad keys and values are InvalidArgumentError naming the field", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path, { store: { maxValueBytes: 1024 } });
  const store = kernel.store;
  assert.throws(
    () => store.put(42 as never, "v"),
    (e: unknown) => e instanceof InvalidArgumentError && e.details.field === "key",
  );
  assert.throws(
    () => store.put("k", null as never),
    (e: unknown) => e instanceof InvalidArgumentError && e.details.field === "value",
  );
  assert.throws(
    () => store.put("k", new Uint8Array(1025)),
    (e: unknown) => e instanceof InvalidArgumentError && /maximum of 1024/.test(e.message),
  );
  assert.throws(() => store.tree("bad\0name"), InvalidArgumentError);
  await assert.rejects(store.commit([]), InvalidArgumentError);
  await assert.rejects(store.commit([{ type: "nope" } as never]), InvalidArgumentError);
  await assert.rejects(
    store.commit([{ type: "put", key: "k", value: new Uint8Array(2000) }]),
    (e: unknown) => e instanceof InvalidArgumentError && /maximum/.test(e.message),
  );
  assert.equal(store.has("k"), false, "nothing was written");
});

Deno.test("a write through a cast view never reaches the store (small and large values)", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  for (const size of [100, 64 * 1024]) {
    const original = new Uint8Array(size).fill(0x5a);
    kernel.store.put(`v${size}`, original);
    {
      using value = kernel.store.get(`v${size}`)!;
      // ReadonlyBytes is a type: a cast lets JS write, and it must stay local.
      (value.bytes as Uint8Array).fill(0xff);
    }
    assert.deepEqual(kernel.store.getCopy(`v${size}`), original, `${size}-byte value unchanged`);
  }
  await kernel.store.flush();
  assert.deepEqual(kernel.store.getCopy("v65536"), new Uint8Array(64 * 1024).fill(0x5a));
});

Deno.test("huge values (64 MiB) round-trip through a buffer of their own", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const huge = new Uint8Array(64 << 20);
  for (let i = 0; i < huge.length; i += 4096) huge[i] = (i >> 12) & 0xff;
  huge[huge.length - 1] = 0xee;
  const { txId } = await kernel.store.commit([{ type: "put", key: "huge", value: huge }]);
  assert.ok(txId > 0);
  {
    using value = kernel.store.get("huge")!;
    assert.equal(value.length, huge.length);
    const bytes = value.bytes;
    assert.equal(bytes[huge.length - 1], 0xee);
    assert.equal(bytes[4096 * 77], 77);
  }
  kernel.store.put("huge2", huge);
  assert.equal(kernel.store.getCopy("huge2")!.length, huge.length);
});

Deno.test("commit: atomic batch, checks (CAS), ConflictError names the key", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const store = kernel.store;
  const first = await store.commit([
    { type: "put", key: "balance:a", value: "100" },
    { type: "put", key: "balance:b", value: "0" },
  ], { checks: [{ key: "balance:a", value: null }] });
  // Compare-and-swap: succeeds with the current value…
  const second = await store.commit([
    { type: "put", key: "balance:a", value: "60" },
    { type: "put", key: "balance:b", value: "40" },
  ], { checks: [{ key: "balance:a", value: "100" }] });
  assert.ok(second.txId > first.txId);
  // …and fails with a stale one, writing nothing.
  await assert.rejects(
    store.commit([
      { type: "put", key: "balance:a", value: "0" },
      { type: "put", key: "balance:b", value: "100" },
    ], { checks: [{ key: "balance:b", value: "40" }, { key: "balance:a", value: "100" }] }),
    (error: unknown) => {
      assert.ok(error instanceof ConflictError);
      assert.equal(error.details.key, "balance:a");
      assert.match(error.message, /balance:a/);
      return true;
    },
  );
  assert.equal(store.get("balance:a")?.text(), "60");
  assert.equal(store.get("balance:b")?.text(), "40");
  await assert.rejects(
    store.commit([{ type: "put", key: "x", value: "1" }], {
      checks: [{ key: "balance:a", value: null }],
    }),
    ConflictError,
  );
  // Cross-tree atomic commit.
  await store.commit([
    { type: "put", key: "k", value: "in t1", tree: "t1" },
    { type: "put", key: "k", value: "in t2", tree: "t2" },
  ]);
  assert.equal(store.tree("t1").get("k")?.text(), "in t1");
  assert.equal(store.tree("t2").get("k")?.text(), "in t2");
});

Deno.test("journal: records carry context, keys, previous and new values", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const store = kernel.store;
  store.put("k", "before");
  const ctx = createContext({ tenantId: "acme", traceId: "trace-1" });
  const { txId } = await store.commit([
    { type: "put", key: "k", value: "after" },
    { type: "put", key: "new", value: "n" },
    { type: "delete", key: "k2" },
  ], { ctx });
  await store.commit([{ type: "put", key: "other", value: "o" }], {
    ctx: createContext({ tenantId: "globex" }),
  });
  const records = [...kernel.journal.read({ since: txId })];
  assert.equal(records.length, 2);
  const [record] = records;
  assert.equal(record.txId, txId);
  assert.equal(record.ctx?.requestId, ctx.requestId);
  assert.equal(record.ctx?.tenantId, "acme");
  assert.equal(record.ctx?.traceId, "trace-1");
  assert.ok(Math.abs(record.time.getTime() - Date.now()) < 60_000);
  assert.deepEqual(
    record.changes.map((c) => [text(c.key), text(c.previous), text(c.value)]),
    [["k", "before", "after"], ["new", null, "n"], ["k2", null, null]],
  );
  assert.deepEqual([...kernel.journal.read({ tenantId: "globex" })].map((r) => r.ctx?.tenantId), [
    "globex",
  ]);
});

Deno.test("undo reverts a transaction; a later change makes it a conflict naming that tx", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const store = kernel.store;
  store.put("a", "a0");
  const t1 = await store.commit([
    { type: "put", key: "a", value: "a1" },
    { type: "put", key: "b", value: "b1" },
  ]);
  const t2 = await store.commit([{ type: "put", key: "c", value: "c1" }]);
  const undone = await kernel.journal.undo(t1.txId, { ctx: createContext({ tenantId: "ops" }) });
  assert.equal(store.get("a")?.text(), "a0");
  assert.equal(store.has("b"), false);
  assert.equal(store.get("c")?.text(), "c1", "other transactions are untouched");
  const record = [...kernel.journal.read({ since: undone.txId })][0];
  assert.equal(record.undoOf, t1.txId);

  const t3 = await store.commit([{ type: "put", key: "c", value: "c2" }]);
  await assert.rejects(kernel.journal.undo(t2.txId), (error: unknown) => {
    assert.ok(error instanceof ConflictError);
    assert.equal(error.details.conflictingTxId, String(t3.txId));
    assert.match(error.message, new RegExp(`transaction ${t3.txId}`));
    return true;
  });
  assert.equal(store.get("c")?.text(), "c2", "a refused undo writes nothing");
  store.put("c", "changed outside a transaction");
  await assert.rejects(kernel.journal.undo(t3.txId), /unjournaled/);
  await assert.rejects(kernel.journal.undo(999_999), NotFoundError);
  await assert.rejects(kernel.journal.undo(-1), InvalidArgumentError);
});

Deno.test("an undo conflict on a huge key is still a ConflictError (the message is bounded)", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const key = "k".repeat(40_000);
  const first = await kernel.store.commit([{ type: "put", key, value: "1" }]);
  const later = await kernel.store.commit([{ type: "put", key, value: "2" }]);
  await assert.rejects(kernel.journal.undo(first.txId), (error: unknown) => {
    assert.ok(error instanceof ConflictError, String(error));
    assert.equal(error.details.conflictingTxId, String(later.txId));
    return true;
  });
  assert.equal(kernel.store.getCopy(key)?.length, 1, "nothing was undone");
});

Deno.test("scan: order, prefix, bounds, limit, reverse, streaming in batches", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const store = kernel.store;
  const keys = Array.from({ length: 3000 }, (_, i) => `item:${String(i).padStart(5, "0")}`);
  for (const key of [...keys].reverse()) store.put(key, `v-${key}`.repeat(4));
  store.put("other", "x");
  store.tree("elsewhere").put("item:zzzzz", "not in this tree");
  const all = [...store.scan({ prefix: "item:" })].map((e) => text(e.key as Uint8Array));
  assert.deepEqual(all, keys, "every entry, in key order, across many batches");
  const entry = store.scan({ prefix: "item:", limit: 1 }).next().value!;
  assert.equal(text(entry.value as Uint8Array), `v-${keys[0]}`.repeat(4));
  assert.deepEqual(
    [...store.scan({ prefix: "item:", limit: 3, reverse: true })].map((e) =>
      text(e.key as Uint8Array)
    ),
    keys.slice(-3).reverse(),
  );
  assert.deepEqual(
    [...store.scan({ start: "item:00010", end: "item:00013" })].map((e) =>
      text(e.key as Uint8Array)
    ),
    ["item:00010", "item:00011", "item:00012"],
  );
  assert.equal([...store.scan({ prefix: "nothing" })].length, 0);
  assert.equal([...store.scan()].length, 3001);
  // Breaking out early closes the native scan.
  for (const _ of store.scan()) break;
  assert.throws(() => store.scan({ limit: -1 }), InvalidArgumentError);
});

Deno.test("watch: an async iterator of changes under a prefix", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const store = kernel.store;
  const watch = store.watch("user:");
  store.put("user:1", "alice");
  store.put("other", "ignored");
  await store.commit([{ type: "put", key: "user:2", value: "bob" }, {
    type: "delete",
    key: "user:1",
  }]);
  const seen: string[] = [];
  for await (const change of watch) {
    seen.push(`${change.type} ${text(change.key)} ${text(change.value)}`);
    if (seen.length === 3) break;
  }
  // Changes of one atomic commit arrive together, in no particular order.
  assert.equal(seen[0], "put user:1 alice");
  assert.deepEqual(seen.slice(1).sort(), ["delete user:1 null", "put user:2 bob"]);
});

Deno.test("two kernels on one data dir: the second gets LockedError naming the path", async () => {
  using dir = tempDir();
  const first = await open(dir.path);
  await assert.rejects(open(dir.path), (error: unknown) => {
    assert.ok(error instanceof LockedError);
    assert.equal(error.code, "LOCKED");
    assert.equal(error.details.path, dir.path);
    assert.ok(error.message.includes(dir.path), error.message);
    return true;
  });
  first.store.put("k", "v");
  await first.close();
  await using second = await open(dir.path);
  assert.equal(second.store.get("k")?.text(), "v", "reopened after close; unflushed put kept");
});

Deno.test("another process holding the data dir: LockedError", async () => {
  using dir = tempDir();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", fixture("hold_store.ts"), dir.path],
    env: { KREPIS_LIBRARY_PATH: libraryPath() },
    stdout: "piped",
    stdin: "piped",
  }).spawn();
  const reader = child.stdout.getReader();
  const { value } = await reader.read();
  assert.match(new TextDecoder().decode(value), /ready/);
  await assert.rejects(
    open(dir.path),
    (error: unknown) => error instanceof LockedError && /another process/.test(error.message),
  );
  await child.stdin.close();
  reader.releaseLock();
  await child.stdout.cancel();
  await child.status;
  await using kernel = await open(dir.path);
  assert.equal(kernel.store.get("held")?.text(), "yes");
});

Deno.test("a foreign or corrupt data dir is a typed error and is left untouched", async () => {
  using dir = tempDir();
  Deno.writeTextFileSync(`${dir.path}/notes.txt`, "my files");
  await assert.rejects(open(dir.path), (error: unknown) => {
    assert.ok(error instanceof CorruptError);
    assert.equal(error.details.reason, "foreign");
    assert.match(error.message, /notes\.txt/);
    return true;
  });
  assert.deepEqual([...Deno.readDirSync(dir.path)].map((e) => e.name), ["notes.txt"]);

  using corrupt = tempDir();
  {
    await using kernel = await open(corrupt.path);
    await kernel.store.commit([{ type: "put", key: "k", value: "v" }]);
  }
  const marker = `${corrupt.path}/KREPIS_DATA_DIR`;
  Deno.writeTextFileSync(marker, "something else\n");
  await assert.rejects(open(corrupt.path), CorruptError);
  Deno.writeTextFileSync(marker, "krepis data directory, format 1\n");
  // Garbage over the store's files: refused (or recovered), never a crash.
  for (const entry of Deno.readDirSync(`${corrupt.path}/store`)) {
    if (!entry.isFile) continue;
    const path = `${corrupt.path}/store/${entry.name}`;
    const bytes = Deno.readFileSync(path);
    bytes.fill(0xa5, 0, Math.min(bytes.length, 4096));
    Deno.writeFileSync(path, bytes);
  }
  try {
    await using kernel = await open(corrupt.path);
    kernel.store.get("k");
  } catch (error) {
    assert.ok(error instanceof CorruptError, `CorruptError, got ${error}`);
  }
});

Deno.test("store use after kernel close is ClosedError; no store without a data dir", async () => {
  using dir = tempDir();
  const kernel = await open(dir.path);
  const store = kernel.store;
  const scan = store.scan();
  await kernel.close();
  assert.throws(() => store.get("k"), ClosedError);
  assert.throws(() => store.put("k", "v"), ClosedError);
  assert.throws(() => scan.next(), ClosedError);
  await assert.rejects(store.commit([{ type: "put", key: "k", value: "v" }]), ClosedError);
  assert.throws(() => kernel.store, ClosedError);
  await using noData = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
  assert.throws(() => noData.store, InvalidArgumentError);
  assert.equal(noData.stats().store, null);
});

Deno.test("journal retention by count", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path, { store: { journalMaxRecords: 5 } });
  let last = 0;
  for (let i = 0; i < 12; i++) {
    last = (await kernel.store.commit([{ type: "put", key: `k${i}`, value: "v" }])).txId;
  }
  const records = [...kernel.journal.read()];
  assert.equal(records.length, 5);
  assert.equal(records.at(-1)!.txId, last);
  await assert.rejects(kernel.journal.undo(1), NotFoundError);
  assert.equal(kernel.stats().store?.journalRecords, 5);
});

Deno.test("concurrent commits are group-committed", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const before = kernel.stats().store!;
  const results = await Promise.all(
    Array.from(
      { length: 64 },
      (_, i) => kernel.store.commit([{ type: "put", key: `g${i}`, value: "v" }]),
    ),
  );
  assert.equal(new Set(results.map((r) => r.txId)).size, 64);
  const after = kernel.stats().store!;
  assert.equal(after.commits - before.commits, 64);
  assert.ok(
    after.flushes - before.flushes < 64,
    `${after.flushes - before.flushes} flushes for 64 commits`,
  );
});

Deno.test("journal retention by age", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path, { store: { journalMaxAgeMs: 200 } });
  const old = await kernel.store.commit([{ type: "put", key: "old", value: "v" }]);
  await new Promise((resolve) => setTimeout(resolve, 400));
  const fresh = await kernel.store.commit([{ type: "put", key: "fresh", value: "v" }]);
  const ids = [...kernel.journal.read()].map((record) => record.txId);
  assert.ok(!ids.includes(old.txId), `the old record was pruned (${ids})`);
  assert.ok(ids.includes(fresh.txId));
  assert.equal(kernel.store.get("old")?.text(), "v", "retention drops journal records, not data");
});

Deno.test("a huge key in a failed check does not break later commits", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const hugeKey = "k".repeat(40_000);
  await assert.rejects(
    kernel.store.commit([{ type: "put", key: hugeKey, value: "v" }], {
      checks: [{ key: hugeKey, value: "other" }],
    }),
    ConflictError,
  );
  const { txId } = await kernel.store.commit([{ type: "put", key: "after", value: "ok" }]);
  assert.ok(txId > 0);
});

Deno.test("close() lets submitted commits finish and report their real outcome", async () => {
  using dir = tempDir();
  const kernel = await open(dir.path);
  const store = kernel.store;
  const commits = Array.from(
    { length: 200 },
    (_, i) => store.commit([{ type: "put", key: `c${i}`, value: String(i) }]),
  );
  const closing = kernel.close();
  const outcomes = await Promise.allSettled(commits);
  await closing;
  assert.equal(outcomes.filter((o) => o.status === "fulfilled").length, 200);
  await assert.rejects(store.commit([{ type: "put", key: "late", value: "x" }]), ClosedError);
  await using reopened = await open(dir.path);
  for (let i = 0; i < 200; i++) assert.equal(reopened.store.get(`c${i}`)?.text(), String(i));
});

Deno.test("an unread watch never stalls writers; it catches up later", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const watch = kernel.store.watch("w:", { capacity: 4096 });
  for (let i = 0; i < 5_000; i++) kernel.store.put(`w:${String(i).padStart(5, "0")}`, String(i));
  let seen = 0;
  for await (const change of watch) {
    assert.equal(text(change.value), String(seen));
    if (++seen === 5_000) break;
  }
});

Deno.test("a watch that falls 64 MiB behind ends with ResourceExhaustedError", async () => {
  using dir = tempDir();
  await using kernel = await open(dir.path);
  const watch = kernel.store.watch("big:", { capacity: 2 << 20 });
  const value = new Uint8Array(1 << 20);
  for (let i = 0; i < 80; i++) kernel.store.put(`big:${i}`, value);
  await assert.rejects(
    (async () => {
      for await (const _ of watch) await new Promise((resolve) => setTimeout(resolve, 1));
    })(),
    (error: unknown) => error instanceof ResourceExhaustedError && /64 MiB/.test(String(error)),
  );
});

Deno.test("a data dir that lost its store is refused, not recreated", async () => {
  using dir = tempDir();
  {
    await using kernel = await open(dir.path);
    await kernel.store.commit([{ type: "put", key: "k", value: "v" }]);
  }
  Deno.removeSync(`${dir.path}/store`, { recursive: true });
  await assert.rejects(
    open(dir.path),
    (error: unknown) => error instanceof CorruptError && /lost its store/.test(error.message),
  );
  assert.throws(
    () => Deno.statSync(`${dir.path}/store`),
    Deno.errors.NotFound,
    "nothing recreated",
  );
});
