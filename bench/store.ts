/**
 * The store against Deno KV (`Deno.openKv` on a temp path), same data:
 * 16-byte keys, 100-byte values. Figures: point gets/s, puts/s (ours
 * non-durable; KV's `set` is its only kind), durable 10-op commits/s with 16
 * concurrent committers (group commit vs `kv.atomic()`), scanned entries/s.
 * Medians of 5 runs; ratios are ours ÷ Deno KV.
 *
 * Run: `deno task bench:store` (needs `--unstable-kv`, which the task passes).
 *
 * @module
 */

import { Kernel } from "../mod.ts";
import { libraryPath, median, ratio, report } from "./_harness.ts";

const ENTRIES = 20_000;
const KV_OPS = 2_000;
const COMMITTERS = 16;
const COMMITS = 4_000;
const KV_COMMITS = 600;
const RUNS = 5;

const encoder = new TextEncoder();
const keyOf = (i: number) => `k${String(i).padStart(15, "0")}`; // 16 bytes
const value = new Uint8Array(100).fill(42);

const dir = await Deno.makeTempDir({ prefix: "krepis-bench-store-" });
const kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir: `${dir}/krepis` });
const kv = await Deno.openKv(`${dir}/kv.sqlite`);
const store = kernel.store;

async function rate(fn: () => Promise<number> | number): Promise<number> {
  const rates: number[] = [];
  for (let run = 0; run < RUNS; run++) {
    const start = performance.now();
    const ops = await fn();
    rates.push(ops / ((performance.now() - start) / 1000));
  }
  return median(rates);
}

// Load both with the same data.
for (let i = 0; i < ENTRIES; i++) store.put(keyOf(i), value);
await store.flush();
for (let i = 0; i < ENTRIES; i += 500) {
  const atomic = kv.atomic();
  for (let j = i; j < Math.min(i + 500, ENTRIES); j++) atomic.set([keyOf(j)], value);
  await atomic.commit();
}
const keys = Array.from({ length: ENTRIES }, (_, i) => keyOf((i * 7919) % ENTRIES));
const keyBytes = keys.map((key) => encoder.encode(key));

const ourGets = await rate(() => {
  let found = 0;
  for (const key of keyBytes) {
    const got = store.get(key);
    if (got !== null) {
      found++;
      got.release();
    }
  }
  if (found !== ENTRIES) throw new Error("missing keys");
  return ENTRIES;
});
const kvGets = await rate(async () => {
  for (let i = 0; i < KV_OPS; i++) await kv.get([keys[i]]);
  return KV_OPS;
});
report("store_get", ourGets, "ops/s");
report("denokv_get", kvGets, "ops/s");
ratio("store_get_vs_denokv", ourGets, kvGets);

let generation = 0;
const ourPuts = await rate(() => {
  // A new value every run: sled must really write, not find the same bytes.
  const fresh = new Uint8Array(100).fill(++generation);
  for (const key of keyBytes) store.put(key, fresh);
  return ENTRIES;
});
const kvPuts = await rate(async () => {
  const fresh = new Uint8Array(100).fill(++generation);
  for (let i = 0; i < KV_OPS; i++) await kv.set([keys[i]], fresh);
  return KV_OPS;
});
report("store_put_nondurable", ourPuts, "ops/s");
report("denokv_set", kvPuts, "ops/s");
ratio("store_put_vs_denokv", ourPuts, kvPuts);

async function concurrently(
  total: number,
  commit: (n: number) => Promise<unknown>,
): Promise<number> {
  let next = 0;
  await Promise.all(Array.from({ length: COMMITTERS }, async () => {
    while (next < total) await commit(next++);
  }));
  return total;
}
const ourCommits = await rate(() =>
  concurrently(COMMITS, (n) =>
    store.commit(
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
report("store_commit_10op_durable_16way", ourCommits, "commits/s");
report("denokv_atomic_10op_16way", kvCommits, "commits/s");
ratio("store_commit_vs_denokv_atomic", ourCommits, kvCommits);
const stats = kernel.stats().store!;
report("store_commits_per_flush", stats.commits / Math.max(1, stats.flushes), "commits");

const ourScan = await rate(() => {
  let n = 0;
  for (const entry of store.scan()) n += entry.value.length > 0 ? 1 : 0;
  return n;
});
const kvScan = await rate(async () => {
  let n = 0;
  for await (const _ of kv.list({ prefix: [] })) n++;
  return n;
});
report("store_scan", ourScan, "entries/s");
report("denokv_list", kvScan, "entries/s");
ratio("store_scan_vs_denokv", ourScan, kvScan);

kv.close();
await kernel.close();
await Deno.remove(dir, { recursive: true });
