import assert from "node:assert/strict";
import { Kernel } from "../mod.ts";
import { fixture, libraryPath, tempDir } from "./_helpers.ts";

const WORKERS = 4;
const KEYS = 10;
const ROUNDS = 20;
const decoder = new TextDecoder();

/** Runs the commit loop in a child and SIGKILLs it; returns the acknowledged commits. */
async function runAndKill(
  dataDir: string,
  killAfterMs: number,
): Promise<{ acknowledged: Map<number, number>; count: number }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", fixture("commit_loop.ts"), dataDir],
    env: { KREPIS_LIBRARY_PATH: libraryPath() },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const acknowledged = new Map<number, number>();
  let acknowledgedLines = 0;
  let buffered = "";
  let started = false;
  const reader = child.stdout.getReader();
  const readAll = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffered += decoder.decode(value, { stream: true });
      const lines = buffered.split("\n");
      buffered = lines.pop()!;
      for (const line of lines) {
        if (line === "started") started = true;
        const match = line.match(/^ok (\d+) (\d+) (\d+)$/);
        if (match) {
          acknowledged.set(Number(match[1]), Number(match[2]));
          acknowledgedLines++;
        }
      }
    }
  })();
  for (let i = 0; i < 500 && !started; i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(started, "the child started committing");
  await new Promise((resolve) => setTimeout(resolve, killAfterMs));
  child.kill("SIGKILL");
  const status = await child.status;
  await readAll;
  await child.stderr.cancel();
  if (Deno.build.os === "windows") assert.equal(status.success, false, "killed, not exited");
  else assert.equal(status.signal, "SIGKILL", "killed, not exited");
  return { acknowledged, count: acknowledgedLines };
}

Deno.test({
  name: `crash safety: ${ROUNDS} SIGKILLs mid-commit lose no acknowledged commit, no partial batch`,
  fn: async () => {
    using dir = tempDir();
    const highest = new Map<number, number>();
    let totalAcknowledged = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const { acknowledged, count } = await runAndKill(
        dir.path,
        30 + Math.floor(Math.random() * 300),
      );
      totalAcknowledged += count;
      for (const [worker, seq] of acknowledged) {
        highest.set(worker, Math.max(highest.get(worker) ?? 0, seq));
      }
      await using kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir: dir.path });
      const store = kernel.store;
      for (let w = 0; w < WORKERS; w++) {
        const values = Array.from(
          { length: KEYS },
          (_, k) => store.get(`w${w}:${k}`)?.text() ?? "0",
        );
        assert.equal(
          new Set(values).size,
          1,
          `round ${round}: worker ${w} has a partial batch: ${values}`,
        );
        assert.ok(
          Number(values[0]) >= (highest.get(w) ?? 0),
          `round ${round}: worker ${w} lost acknowledged commit ${highest.get(w)} (has ${
            values[0]
          })`,
        );
      }
      // The journal matches the data: contiguous ids, whole batches, and the
      // last record per worker holds the data's current values.
      let previous = 0;
      const lastValue = new Map<number, string>();
      for (const record of kernel.journal.read()) {
        if (previous !== 0) assert.equal(record.txId, previous + 1, "contiguous tx ids");
        previous = record.txId;
        assert.equal(record.changes.length, KEYS, `tx ${record.txId} is a whole batch`);
        const w = Number(decoder.decode(record.changes[0].key).slice(1).split(":")[0]);
        const written = new Set(record.changes.map((c) => decoder.decode(c.value!)));
        assert.equal(written.size, 1);
        assert.equal(record.ctx?.tenantId, `worker-${w}`);
        lastValue.set(w, [...written][0]);
      }
      for (let w = 0; w < WORKERS; w++) {
        const current = store.get(`w${w}:0`)?.text();
        if (current !== undefined) {
          assert.equal(lastValue.get(w), current, `journal matches data for ${w}`);
        }
      }
    }
    console.log(
      `${ROUNDS} kills, ${totalAcknowledged} acknowledged commits, all present and whole`,
    );
    assert.ok(totalAcknowledged > ROUNDS, "the children made progress");
  },
});
