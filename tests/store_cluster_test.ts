/**
 * The store on a real 3-member etcd cluster (Debian's etcd-server, started
 * here on 127.0.0.1 with free ports and temporary data dirs): the same API
 * as the local store, shared by kernels in several processes, through
 * member crashes, a whole-cluster outage and compaction.
 */
import assert from "node:assert/strict";
import {
  ConflictError,
  ConnectionError,
  createContext,
  InvalidArgumentError,
  Kernel,
  NotFoundError,
  type ReadonlyBytes,
  type StoreChange,
  UnsupportedError,
} from "../mod.ts";
import { etcdAvailable, EtcdCluster } from "./_etcd.ts";
import { fixture, libraryPath } from "./_helpers.ts";
import { diagnostics } from "./_diagnostics.ts";
import { ownerOf } from "../bindings/_owner.ts";

const text = (bytes: Uint8Array | ReadonlyBytes | null): string | null =>
  bytes === null ? null : new TextDecoder().decode(bytes as Uint8Array);

let prefixes = 0;
/** A fresh prefix per test step: steps share the cluster, not keys. */
const freshPrefix = (): string => `/krepis-test-${Date.now()}-${prefixes++}/`;

function open(cluster: EtcdCluster, prefix: string, extra: Record<string, number> = {}) {
  return Kernel.open({
    dataDir: null,
    libraryPath: libraryPath(),
    store: { cluster: { endpoints: cluster.endpoints, prefix, ...extra } },
  });
}

/** Waits for `predicate` (polling; reads are synchronous), failing after `ms`. */
async function eventually(what: string, predicate: () => boolean, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Runs tests/fixtures/cluster_worker.ts; yields its JSON lines. */
function worker(
  args: string[],
): { lines: AsyncGenerator<Record<string, unknown>>; child: Deno.ChildProcess } {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", fixture("cluster_worker.ts"), ...args],
    env: { KREPIS_LIBRARY_PATH: libraryPath() },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  async function* lines() {
    let buffered = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line.startsWith("{")) yield JSON.parse(line);
      }
    }
  }
  return { lines: lines(), child };
}

Deno.test({
  name: "cluster store: a 3-member etcd cluster shared by kernels and processes",
  ignore: !etcdAvailable(),
}, async (t) => {
  await using cluster = await EtcdCluster.start();

  await t.step("same API: commit, read-your-writes, revisions, journal, undo", async () => {
    const prefix = freshPrefix();
    await using a = await open(cluster, prefix);
    await using b = await open(cluster, prefix);
    const { txId } = await a.store.commit(
      [{ type: "put", key: "k", value: "v1" }, { type: "put", key: "gone", value: "x" }],
      { ctx: createContext({ tenantId: "acme" }), checks: [{ key: "k", value: null }] },
    );
    // Resolved = committed by etcd AND applied by this kernel's replica.
    assert.equal(text(a.store.getCopy("k")), "v1");
    assert.ok(a.store.has("gone"));
    const state = a.store.replica()!;
    assert.ok(state.revision >= txId, "the replica reflects the commit's revision");
    assert.equal(state.stale, false);
    // tx ids are cluster revisions: another kernel's commit gets a larger one.
    const second = await b.store.commit([{ type: "delete", key: "gone" }]);
    assert.ok(second.txId > txId);
    await a.store.sync();
    assert.equal(a.store.has("gone"), false);
    using linear = await b.store.getLinearizable("k");
    assert.equal(linear?.text(), "v1");
    // The journal is cluster-wide: b reads a's record, with its context.
    await b.store.sync();
    const records = [...b.journal.read()];
    assert.deepEqual(records.map((r) => r.txId), [txId, second.txId]);
    assert.equal(records[0].ctx?.tenantId, "acme");
    assert.equal(text(records[0].changes.find((c) => text(c.key) === "k")!.value), "v1");
    assert.equal(text(records[1].changes[0].previous), "x");
    // Undo from the other kernel, with the local conflict rules.
    await assert.rejects(() => b.journal.undo(txId), (error: unknown) => {
      assert.ok(error instanceof ConflictError);
      assert.equal(error.details.conflictingTxId, String(second.txId));
      return true;
    });
    const undone = await b.journal.undo(second.txId);
    assert.equal(text(b.store.getCopy("gone")), "x");
    await assert.rejects(() => b.journal.undo(123456789), NotFoundError);
    await a.store.sync();
    assert.equal([...a.journal.read({ since: undone.txId })][0].undoOf, second.txId);
    // A failed check names the key; nothing is written.
    await assert.rejects(
      () =>
        a.store.commit([{ type: "put", key: "k", value: "v2" }], {
          checks: [{ key: "k", value: "not-v1" }],
        }),
      (error: unknown) => error instanceof ConflictError && error.details.key === "k",
    );
    assert.equal(text(a.store.getCopy("k")), "v1");
    // Single-key writes refuse with a typed error naming commit.
    assert.throws(() => a.store.put("k", "v"), (error: unknown) => {
      assert.ok(error instanceof UnsupportedError);
      assert.match(error.message, /commit/);
      return true;
    });
    assert.throws(() => a.store.delete("k"), UnsupportedError);
    assert.equal(text(a.store.getCopy("k")), "v1");
    // Trees and scans read the replica.
    await a.store.commit([
      { type: "put", key: "u1", value: "1", tree: "users" },
      { type: "put", key: "u2", value: "2", tree: "users" },
    ]);
    assert.deepEqual([...a.store.tree("users").scan()].map((e) => text(e.key)), ["u1", "u2"]);
  });

  await t.step(
    "two kernels in two processes see each other's commits (get and watch)",
    async () => {
      const prefix = freshPrefix();
      await using kernel = await open(cluster, prefix);
      const pongs = kernel.store.watch("pong");
      const { lines, child } = worker(["pingpong", cluster.endpoints.join(","), prefix]);
      assert.deepEqual((await lines.next()).value, { ready: true });
      await kernel.store.commit([{ type: "put", key: "ping", value: "hello" }]);
      const changes: StoreChange[] = [];
      for await (const change of pongs) {
        changes.push(change);
        break;
      }
      assert.equal(text(changes[0].value), "hello");
      // Once the watch delivered it, this kernel's get sees it too.
      assert.equal(text(kernel.store.getCopy("pong")), "hello");
      const done = (await lines.next()).value;
      assert.equal(done.seen, "hello");
      assert.equal(done.getAfterWatch, "hello");
      assert.equal((await child.status).code, 0);
      pongs.close();
    },
  );

  await t.step("2 processes x 32 tasks of check-and-set increments lose no update", async () => {
    const prefix = freshPrefix();
    const rounds = 3;
    const workers = [0, 1].map(() =>
      worker(["increment", cluster.endpoints.join(","), prefix, "32", String(rounds)])
    );
    const results = [];
    for (const { lines, child } of workers) {
      results.push((await lines.next()).value);
      assert.equal((await child.status).code, 0);
    }
    await using kernel = await open(cluster, prefix);
    assert.equal(text(kernel.store.getCopy("counter")), String(2 * 32 * rounds));
    const txIds = results.flatMap((r) => r.txIds as number[]);
    assert.equal(new Set(txIds).size, 2 * 32 * rounds, "every tx id is distinct cluster-wide");
    assert.equal([...kernel.journal.read()].length, 2 * 32 * rounds);
  });

  await t.step("SIGKILL of a member during commits loses no acknowledged commit", async () => {
    const prefix = freshPrefix();
    await using kernel = await open(cluster, prefix);
    const acked = new Map<string, number>();
    let killedAt = -1;
    const committer = async (id: number) => {
      for (let i = 0; i < 25; i++) {
        const key = `c${id}-${i}`;
        const { txId } = await kernel.store.commit([{ type: "put", key, value: key }]);
        acked.set(key, txId);
      }
    };
    const running = Promise.all(Array.from({ length: 8 }, (_, id) => committer(id)));
    await eventually("some commits", () => acked.size >= 40);
    // A follower (killing the leader: see the notes in docs/store-cluster.md).
    const leader = (await cluster.leader() + 1) % 3;
    killedAt = acked.size;
    await cluster.kill(leader);
    await running;
    assert.equal(acked.size, 200);
    assert.ok(acked.size > killedAt, "commits continued after the kill");
    await kernel.store.sync();
    for (const [key, txId] of acked) assert.equal(text(kernel.store.getCopy(key)), key, `${txId}`);
    const journaled = new Set([...kernel.journal.read()].map((r) => r.txId));
    for (const txId of acked.values()) assert.ok(journaled.has(txId));
    assert.equal(journaled.size, 200, "no commit was applied twice");
    cluster.restart(leader);
    await cluster.waitHealthy();
  });

  await t.step(
    "all members down: typed errors within the deadline, stale reads, recovery",
    async () => {
      const prefix = freshPrefix();
      await using a = await open(cluster, prefix);
      await using b = await open(cluster, prefix);
      await a.store.commit([{ type: "put", key: "k", value: "before" }]);
      for (let i = 0; i < 3; i++) await cluster.kill(i);
      const started = Date.now();
      await assert.rejects(
        () =>
          a.store.commit([{ type: "put", key: "k", value: "during" }], {
            ctx: createContext({ timeoutMs: 1500 }),
          }),
        ConnectionError,
      );
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 1400 && elapsed < 3000, `rejected after ${elapsed} ms`);
      await assert.rejects(
        () => a.store.sync({ ctx: createContext({ timeoutMs: 500 }) }),
        ConnectionError,
      );
      // Replica reads keep working and say they are stale.
      assert.equal(text(a.store.getCopy("k")), "before");
      await eventually("a stale replica", () => a.store.replica()!.stale);
      assert.ok(a.store.replica()!.staleSince instanceof Date);
      assert.notEqual(a.store.replica()!.reason, "");
      for (let i = 0; i < 3; i++) cluster.restart(i);
      await cluster.waitHealthy();
      // b commits; a's replica catches up without a restart.
      await b.store.commit([{ type: "put", key: "k", value: "after" }]);
      await eventually("a to catch up", () => text(a.store.getCopy("k")) === "after", 15_000);
      await eventually("a fresh replica", () => !a.store.replica()!.stale, 15_000);
      await a.store.commit([{ type: "put", key: "k2", value: "ok" }]);
    },
  );

  await t.step("compaction past the replica forces a clean resync", async () => {
    const prefix = freshPrefix();
    await using a = await open(cluster, prefix);
    await using b = await open(cluster, prefix);
    await a.store.commit([
      { type: "put", key: "keep", value: "1" },
      { type: "put", key: "drop", value: "1" },
    ]);
    await b.store.sync();
    const changes = b.store.watch("");
    const pause = (paused: number) =>
      diagnostics().krepis_store_debug_pause_replica(ownerOf(b).handle, paused);
    assert.equal(pause(1), 0);
    await eventually("b's watch to stop", () => b.store.replica()!.stale);
    await a.store.commit([{ type: "put", key: "keep", value: "2" }]);
    await a.store.commit([{ type: "delete", key: "drop" }]);
    await a.store.commit([{ type: "put", key: "new", value: "3" }]);
    await cluster.etcdctl("compact", String(await cluster.revision()));
    assert.equal(text(b.store.getCopy("drop")), "1", "b is behind while paused");
    assert.equal(pause(0), 0);
    await eventually("a resync", () => b.store.replica()!.resyncs === 1);
    assert.equal(text(b.store.getCopy("keep")), "2");
    assert.equal(b.store.has("drop"), false);
    assert.equal(text(b.store.getCopy("new")), "3");
    assert.equal(b.store.replica()!.revision, a.store.replica()!.revision);
    // The resync reached watchers as the differences.
    const seen = new Map<string, string>();
    for await (const change of changes) {
      seen.set(text(change.key)!, change.type);
      if (seen.size === 3) break;
    }
    assert.deepEqual(seen, new Map([["keep", "put"], ["drop", "delete"], ["new", "put"]]));
    changes.close();
    // The journal survived: b reads every record.
    assert.equal([...b.journal.read()].length, 4);
  });

  await t.step("oversized transactions are refused with typed errors", async () => {
    const prefix = freshPrefix();
    await using kernel = await open(cluster, prefix);
    const big = "x".repeat(800 * 1024);
    const started = Date.now();
    await assert.rejects(
      () => kernel.store.commit([{ type: "put", key: "big", value: big }]),
      (error: unknown) => {
        assert.ok(error instanceof InvalidArgumentError);
        assert.equal(error.details.reason, "request_too_large");
        assert.equal(error.details.limit, String(1536 * 1024));
        return true;
      },
    );
    assert.ok(Date.now() - started < 1000, "refused before sending");
    const ops = Array.from({ length: 127 }, (_, i) => ({
      type: "put" as const,
      key: `k${i}`,
      value: "v",
    }));
    await assert.rejects(
      () => kernel.store.commit(ops),
      (error: unknown) =>
        error instanceof InvalidArgumentError && error.details.reason === "too_many_ops",
    );
    await kernel.store.commit(ops.slice(0, 126));
    assert.equal(kernel.store.has("k125"), true);
    assert.equal(kernel.store.has("big"), false);
    // A kernel told the cluster accepts more gets etcd's own refusal, typed.
    await using lax = await open(cluster, prefix, { maxRequestBytes: 64 << 20, maxTxnOps: 4096 });
    await assert.rejects(
      () => lax.store.commit([{ type: "put", key: "big", value: big.repeat(3) }]),
      (error: unknown) =>
        error instanceof InvalidArgumentError && error.details.reason === "request_too_large",
    );
    await assert.rejects(
      () => lax.store.commit(Array.from({ length: 300 }, (_, i) => ({ ...ops[0], key: `m${i}` }))),
      (error: unknown) =>
        error instanceof InvalidArgumentError && error.details.reason === "too_many_ops",
    );
  });
});

Deno.test("cluster store: bad options are typed errors; an unreachable cluster fails open in time", async () => {
  await assert.rejects(
    () =>
      Kernel.open({
        dataDir: null,
        libraryPath: libraryPath(),
        store: { cluster: { endpoints: [], prefix: "/p/" } },
      }),
    InvalidArgumentError,
  );
  await assert.rejects(
    () =>
      Kernel.open({
        dataDir: null,
        libraryPath: libraryPath(),
        store: { cluster: { endpoints: ["127.0.0.1:1"], prefix: "" } },
      }),
    InvalidArgumentError,
  );
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const started = Date.now();
  await assert.rejects(
    () =>
      Kernel.open({
        dataDir: null,
        libraryPath: libraryPath(),
        store: { cluster: { endpoints: [`127.0.0.1:${port}`], prefix: "/p/", timeoutMs: 800 } },
      }),
    ConnectionError,
  );
  assert.ok(Date.now() - started < 3000);
});
