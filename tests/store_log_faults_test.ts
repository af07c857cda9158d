// Fault injection on the commit log: a child commits and is SIGKILLed (so
// acknowledged commits live only in commit.log), then copies of its data dir
// get bit flips and zeroed words at fixed and seeded random offsets, a
// deleted log, an emptied one. Every case must either open with every
// acknowledged commit present (and hand out only new transaction ids), or
// fail with CorruptError naming the file; `recover: "truncate"` opens anyway
// and reports what it dropped.
import assert from "node:assert/strict";
import { CorruptError, Kernel } from "../mod.ts";
import { fixture, libraryPath, tempDir } from "./_helpers.ts";

const COMMIT_MS = 1200;
const WORKERS = 4;
const LOG = "commit.log";
const decoder = new TextDecoder();

interface Crashed {
  /** Highest acknowledged seq per worker. */
  acked: Map<number, number>;
  /** Highest acknowledged transaction id. */
  maxTxId: number;
}

/**
 * Runs the committing child to the end and SIGKILLs it, until the crash left
 * acknowledged commits that only the log has (sled's background flush may
 * have caught up with all of them, rarely): else these tests prove nothing.
 */
async function commitAndKill(dataDir: string): Promise<Crashed> {
  for (let attempt = 1;; attempt++) {
    const crashed = await commitAndKillOnce(dataDir);
    const probe = `${dataDir}.probe`;
    copyDir(dataDir, probe);
    let replayed = 0;
    {
      await using kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir: probe });
      replayed = kernel.stats().store!.recovery.replayed;
    }
    Deno.removeSync(probe, { recursive: true });
    if (replayed > 0) return crashed;
    assert.ok(attempt < 3, "three crashes in a row left nothing to replay");
    Deno.removeSync(dataDir, { recursive: true });
  }
}

async function commitAndKillOnce(dataDir: string): Promise<Crashed> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", fixture("commit_then_wait.ts"), dataDir, String(COMMIT_MS)],
    env: { KREPIS_LIBRARY_PATH: libraryPath() },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const acked = new Map<number, number>();
  let maxTxId = 0;
  let buffered = "";
  const reader = child.stdout.getReader();
  for (let done = false; !done;) {
    const { value, done: ended } = await reader.read();
    assert.ok(!ended, "the child exited before committing everything");
    buffered += decoder.decode(value, { stream: true });
    const lines = buffered.split("\n");
    buffered = lines.pop()!;
    for (const line of lines) {
      const match = line.match(/^ok (\d+) (\d+) (\d+)$/);
      if (match) {
        acked.set(Number(match[1]), Math.max(acked.get(Number(match[1])) ?? 0, Number(match[2])));
        maxTxId = Math.max(maxTxId, Number(match[3]));
      }
      if (line === "done") done = true;
    }
  }
  child.kill("SIGKILL");
  await child.status;
  reader.releaseLock();
  await child.stdout.cancel();
  await child.stderr.cancel();
  return { acked, maxTxId };
}

function copyDir(from: string, to: string): void {
  Deno.mkdirSync(to, { recursive: true });
  for (const entry of Deno.readDirSync(from)) {
    if (entry.isDirectory) copyDir(`${from}/${entry.name}`, `${to}/${entry.name}`);
    else Deno.copyFileSync(`${from}/${entry.name}`, `${to}/${entry.name}`);
  }
}

/** Opens `dataDir` and checks every acknowledged commit; returns the recovery report. */
async function checkAllPresent(dataDir: string, crashed: Crashed, label: string) {
  await using kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir });
  for (const [w, seq] of crashed.acked) {
    const value = Number(kernel.store.get(`w${w}`)?.text() ?? "0");
    assert.ok(value >= seq, `${label}: worker ${w} lost acknowledged commit ${seq} (has ${value})`);
    for (let s = 1; s <= seq; s++) {
      assert.ok(kernel.store.has(`w${w}:${s}`), `${label}: w${w}:${s} is missing`);
    }
  }
  const { txId } = await kernel.store.commit([{ type: "put", key: "after", value: label }]);
  assert.ok(txId > crashed.maxTxId, `${label}: transaction id ${txId} was handed out before`);
  return kernel.stats().store!.recovery;
}

/** The bytes of commit.log in use: up to its last non-zero byte. */
function usedBytes(log: Uint8Array): number {
  let end = log.length;
  while (end > 0 && log[end - 1] === 0) end--;
  return end;
}

/**
 * Where the last `count` records of a log start (records follow the 128-byte
 * header: a 32-byte head whose length field is at +16, the body padded to 8,
 * a 16-byte trailer).
 */
function lastRecordsStart(log: Uint8Array, used: number, count: number): number {
  const view = new DataView(log.buffer, log.byteOffset, log.byteLength);
  const starts: number[] = [];
  for (let at = 128; at + 32 <= used;) {
    starts.push(at);
    at += 48 + Math.ceil(view.getUint32(at + 16, true) / 8) * 8;
  }
  return starts[Math.max(0, starts.length - count)];
}

/** A small seeded PRNG (mulberry32), so a failing case can be replayed. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test({
  name: "commit log faults: bit flips and zeroed words anywhere lose nothing silently",
  fn: async () => {
    using dir = tempDir();
    const pristine = `${dir.path}/pristine`;
    const crashed = await commitAndKill(pristine);
    assert.equal(crashed.acked.size, WORKERS);

    // Baseline: the untouched crash recovers everything from the log.
    const baseline = `${dir.path}/baseline`;
    copyDir(pristine, baseline);
    const recovery = await checkAllPresent(baseline, crashed, "baseline");
    assert.ok(recovery.replayed > 0, "acknowledged commits were replayed from the log");
    assert.equal(recovery.torn, null);

    const log = Deno.readFileSync(`${pristine}/${LOG}`);
    const used = usedBytes(log);
    const seed = Number(Deno.env.get("KREPIS_FAULT_SEED") ?? Date.now() % 1_000_000);
    const next = random(seed);
    type Case = { label: string; mutate: (bytes: Uint8Array) => void };
    const flip = (at: number, bit = 0): Case => ({
      label: `bit ${bit} flipped at ${at}`,
      mutate: (bytes) => void (bytes[at] ^= 1 << bit),
    });
    const zero = (at: number): Case => ({
      label: `4 bytes zeroed at ${at}`,
      mutate: (bytes) => bytes.fill(0, at, at + 4),
    });
    const cases: Case[] = [
      flip(8), // the header slot's seq
      flip(64 + 16, 3), // the other slot's generation
      flip(128), // the first record's generation
      zero(128 + 16), // the first record's length
      flip(128 + 40, 5), // the first record's body
      flip(Math.floor(used / 2), 2), // a record in the middle
      zero(Math.floor(used / 2) & ~3),
      flip(used - 20, 1), // the last record's body or padding
      flip(used - 1, 7), // the last record's trailer
      zero((used - 48) & ~3), // near the end
    ];
    // Half the random cases hit anywhere, half the records only the log has
    // (the rest are in sled's files already, where damage costs nothing).
    const needed = lastRecordsStart(log, used, recovery.replayed);
    const anywhere = () => Math.floor(next() * used);
    const inNeeded = () => needed + Math.floor(next() * (used - needed));
    for (let i = 0; i < 12; i++) {
      cases.push(flip(anywhere(), Math.floor(next() * 8)));
      cases.push(flip(inNeeded(), Math.floor(next() * 8)));
    }
    for (let i = 0; i < 6; i++) {
      cases.push(zero(Math.min(anywhere(), used - 4) & ~3));
      cases.push(zero(Math.min(inNeeded(), used - 4) & ~3));
    }

    let refused = 0;
    for (const [index, { label, mutate }] of cases.entries()) {
      const copy = `${dir.path}/case-${index}`;
      copyDir(pristine, copy);
      const bytes = Deno.readFileSync(`${copy}/${LOG}`);
      mutate(bytes);
      Deno.writeFileSync(`${copy}/${LOG}`, bytes);
      try {
        await checkAllPresent(copy, crashed, `${label} (seed ${seed})`);
      } catch (error) {
        if (!(error instanceof CorruptError)) throw error;
        assert.match(error.message, new RegExp(`${copy}/${LOG}`), label);
        assert.match(error.message, /recover = "truncate"/, label);
        refused++;
        // Refusing changed nothing: the log is exactly as it was.
        assert.deepEqual(Deno.readFileSync(`${copy}/${LOG}`), bytes, `${label}: log untouched`);
      }
      Deno.removeSync(copy, { recursive: true });
    }
    console.log(
      `${cases.length} damaged logs (seed ${seed}, ${used} bytes in use, the last ` +
        `${used - needed} only in the log): ${refused} refused with CorruptError, ` +
        `${cases.length - refused} recovered every acknowledged commit`,
    );
    assert.ok(refused > 0, "damage to acknowledged records was detected");
  },
});

Deno.test({
  name: "commit log faults: damage is reported with offset and tx range; truncate opens anyway",
  fn: async () => {
    using dir = tempDir();
    const pristine = `${dir.path}/pristine`;
    const crashed = await commitAndKill(pristine);
    const log = Deno.readFileSync(`${pristine}/${LOG}`);
    const used = usedBytes(log);
    // A flipped bit in a record near the end: acknowledged commits after the
    // ones sled flushed are in the records before it.
    const at = used - 64;
    log[at] ^= 0x40;
    Deno.writeFileSync(`${pristine}/${LOG}`, log);
    let corrupt: CorruptError | undefined;
    await Kernel.open({ libraryPath: libraryPath(), dataDir: pristine }).catch((error) => {
      corrupt = error;
    });
    assert.ok(corrupt instanceof CorruptError, String(corrupt));
    assert.equal(corrupt.details.path, `${pristine}/${LOG}`);
    assert.equal(corrupt.details.reason, "damaged_log");
    const offset = Number(corrupt.details.offset);
    assert.ok(offset > 0 && offset <= at, `offset ${offset} is where the damaged record starts`);
    const first = Number(corrupt.details.firstTxId);
    const last = Number(corrupt.details.lastTxId);
    assert.ok(first <= last && last <= crashed.maxTxId, `${first}..${last}`);
    assert.match(corrupt.message, new RegExp(`transactions ${first}\\.\\.=${last}`));

    // The operator accepts the loss: truncate replays the intact prefix.
    await using kernel = await Kernel.open({
      libraryPath: libraryPath(),
      dataDir: pristine,
      store: { recover: "truncate" },
    });
    const recovery = kernel.stats().store!.recovery;
    assert.equal(recovery.mode, "truncate");
    assert.deepEqual(recovery.dropped, {
      offset,
      firstTxId: first,
      lastTxId: last,
      reason: recovery.dropped!.reason,
    });
    assert.match(recovery.dropped!.reason, /damaged record/);
    // Transactions before the damage are there; no id is handed out twice.
    const kept = kernel.journal.read().map((record) => record.txId);
    assert.equal(Math.max(...kept), first - 1, "everything before the damage was kept");
    const { txId } = await kernel.store.commit([{ type: "put", key: "k", value: "v" }]);
    assert.ok(txId > crashed.maxTxId, `new id ${txId} > every acknowledged id`);
  },
});

for (
  const [what, damage] of [
    ["deleted", (path: string) => Deno.removeSync(path)],
    ["emptied", (path: string) => Deno.truncateSync(path, 0)],
    ["zero-filled", (path: string) => Deno.writeFileSync(path, new Uint8Array(4096))],
  ] as const
) {
  Deno.test(`commit log faults: commit.log ${what} is CorruptError, never a silent open`, async () => {
    using dir = tempDir();
    const dataDir = `${dir.path}/data`;
    const crashed = await commitAndKill(dataDir);
    damage(`${dataDir}/${LOG}`);
    await assert.rejects(
      Kernel.open({ libraryPath: libraryPath(), dataDir }),
      (error: unknown) => {
        assert.ok(error instanceof CorruptError, String(error));
        assert.equal(error.details.reason, "missing_log");
        assert.match(error.message, /may be lost/);
        return true;
      },
    );
    // Truncate opens it, says what may be gone, and never reuses an id.
    await using kernel = await Kernel.open({
      libraryPath: libraryPath(),
      dataDir,
      store: { recover: "truncate" },
    });
    const dropped = kernel.stats().store!.recovery.dropped;
    assert.ok(dropped !== null);
    assert.match(dropped.reason, /commit\.log/);
    const { txId } = await kernel.store.commit([{ type: "put", key: "k", value: "v" }]);
    assert.ok(txId > crashed.maxTxId, `new id ${txId} > every acknowledged id`);
    assert.ok(txId > dropped.lastTxId, "ids that may have been dropped are skipped");
  });
}

Deno.test("commit log faults: a clean reopen reports a clean recovery", async () => {
  using dir = tempDir();
  {
    await using kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir: dir.path });
    await kernel.store.commit([{ type: "put", key: "a", value: "1" }]);
  }
  await using kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir: dir.path });
  assert.deepEqual(kernel.stats().store!.recovery, {
    mode: "refuse",
    replayed: 0,
    torn: null,
    dropped: null,
    skipped: [],
  });
  await assert.rejects(
    Kernel.open({ libraryPath: libraryPath(), dataDir: null, store: { recover: "yes" as never } }),
    /store\.recover must be "refuse" or "truncate"/,
  );
});
