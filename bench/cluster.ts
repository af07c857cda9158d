/**
 * The cluster store (a 3-member etcd cluster on loopback, started here)
 * against Deno KV on a local file, same data: 16-byte keys, 100-byte values.
 * Figures: replica gets/s vs linearizable reads/s from the same kernel (the
 * point of the replica) and vs Deno KV gets; durable 10-op commits/s with 16
 * concurrent committers vs `kv.atomic()` (etcd pays consensus and an fsync on
 * every member; all three share this machine's disk and 2 cores); the time
 * from a commit in kernel A to a `watch` in kernel B (p50/p99).
 * Goals (issue #19): replica gets ≥ 50× Deno KV, commits ≥ 0.5× Deno KV.
 *
 * Run: `deno task bench:cluster` (needs etcd and etcdctl on the PATH).
 *
 * @module
 */

import { Kernel } from "../mod.ts";
import { EtcdCluster } from "../tests/_etcd.ts";
import { libraryPath, median, ratio, report } from "./_harness.ts";

const ENTRIES = 2_000;
const LINEAR_OPS = 300;
const KV_OPS = 2_000;
const COMMITTERS = 16;
const COMMITS = 600;
const KV_COMMITS = 600;
const WATCH_SAMPLES = 200;
const RUNS = 3;

const keyOf = (i: number) => `k${String(i).padStart(15, "0")}`; // 16 bytes
const value = new Uint8Array(100).fill(42);

await using cluster = await EtcdCluster.start();
const options = (prefix: string) => ({
  libraryPath: libraryPath(),
  dataDir: null,
  store: { cluster: { endpoints: cluster.endpoints, prefix } },
});
await using a = await Kernel.open(options("/bench/"));
await using b = await Kernel.open(options("/bench/"));
const dir = await Deno.makeTempDir({ prefix: "krepis-bench-cluster-" });
const kv = await Deno.openKv(`${dir}/kv.sqlite`);

async function rate(fn: () => Promise<number> | number): Promise<number> {
  const rates: number[] = [];
  for (let run = 0; run < RUNS; run++) {
    const start = performance.now();
    const ops = await fn();
    rates.push(ops / ((performance.now() - start) / 1000));
  }
  return median(rates);
}

// Load both with the same data (a cluster commit writes at most 126 keys).
for (let i = 0; i < ENTRIES; i += 100) {
  await a.store.commit(
    Array.from({ length: 100 }, (_, k) => ({ type: "put" as const, key: keyOf(i + k), value })),
  );
  const atomic = kv.atomic();
  for (let k = 0; k < 100; k++) atomic.set([keyOf(i + k)], value);
  await atomic.commit();
}
const keys = Array.from({ length: ENTRIES }, (_, i) => keyOf((i * 7919) % ENTRIES));

const replicaGets = await rate(() => {
  let found = 0;
  for (const key of keys) {
    const got = a.store.get(key);
    if (got !== null) {
      found++;
      got.release();
    }
  }
  if (found !== ENTRIES) throw new Error("missing keys");
  return ENTRIES;
});
const linearReads = await rate(async () => {
  for (let i = 0; i < LINEAR_OPS; i++) (await a.store.getLinearizable(keys[i]))?.release();
  return LINEAR_OPS;
});
const kvGets = await rate(async () => {
  for (let i = 0; i < KV_OPS; i++) await kv.get([keys[i]]);
  return KV_OPS;
});
report("cluster_replica_get", replicaGets, "ops/s");
report("cluster_linearizable_get", linearReads, "ops/s");
report("denokv_get", kvGets, "ops/s");
ratio("cluster_replica_get_vs_linearizable", replicaGets, linearReads);
ratio("cluster_replica_get_vs_denokv", replicaGets, kvGets);

async function concurrently(total: number, commit: (n: number) => Promise<unknown>) {
  let next = 0;
  await Promise.all(Array.from({ length: COMMITTERS }, async () => {
    while (next < total) await commit(next++);
  }));
  return total;
}
const clusterCommits = await rate(() =>
  concurrently(COMMITS, (n) =>
    a.store.commit(
      Array.from({ length: 10 }, (_, k) => ({
        type: "put" as const,
        key: keyOf((n * 10 + k) % ENTRIES),
        value,
      })),
    ))
);
const kvCommits = await rate(() =>
  concurrently(KV_COMMITS, (n) => {
    const atomic = kv.atomic();
    for (let k = 0; k < 10; k++) atomic.set([keyOf((n * 10 + k) % ENTRIES)], value);
    return atomic.commit();
  })
);
report("cluster_commit_10op_durable_16way", clusterCommits, "commits/s");
report("denokv_atomic_10op_16way", kvCommits, "commits/s");
ratio("cluster_commit_vs_denokv_atomic", clusterCommits, kvCommits);

// A commit in kernel A reaching a watch in kernel B.
const watch = b.store.watch("lat/");
const iterator = watch[Symbol.asyncIterator]();
const latencies: number[] = [];
for (let i = 0; i < WATCH_SAMPLES; i++) {
  const start = performance.now();
  const committed = a.store.commit([{ type: "put", key: `lat/${i}`, value }]);
  await iterator.next();
  latencies.push((performance.now() - start) * 1000);
  await committed;
}
watch.close();
latencies.sort((x, y) => x - y);
report("cluster_commit_to_watch_p50", latencies[Math.floor(latencies.length * 0.5)], "us");
report("cluster_commit_to_watch_p99", latencies[Math.floor(latencies.length * 0.99)], "us");

kv.close();
await Deno.remove(dir, { recursive: true });
