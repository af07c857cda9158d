/**
 * Runtimes (`kernel.runtimes`) against Deno's own ways of running code apart,
 * interleaved in one run (medians; ratios > 1 mean the runtime wins):
 *
 * 1. spawn-to-first-reply: a pool of one runtime (sandboxed `deno run`) until
 *    its first reply, vs `new Worker(..., { type: "module" })` until its first
 *    message, vs `Deno.Command(deno run …)` plus one stdio round trip. Goal:
 *    within 2× of the plain `deno run` (ratio ≥ 0.5).
 * 2. request round trips per second, one at a time (ping-pong) and 64 in
 *    flight, vs `Worker.postMessage`. Goal: ≥ 0.5× the Worker (a process
 *    boundary and a sandbox against an in-process thread).
 * 3. an HTTP route answered by a pool of 2 runtimes (`handler: pool`) vs
 *    `Deno.serve`, under `wrk -t1 -c50`: req/s and the server's CPU µs per
 *    request (the whole process tree: the parent and its runtimes).
 *
 * Run: `deno task bench:runtimes` (needs `wrk` for part 3; skipped without).
 *
 * @module
 */

import { Kernel } from "../mod.ts";
import { libraryPath, median, ratio, report } from "./_harness.ts";
import { processTree, snapshot, spent } from "./_cpu.ts";

const ROUNDS = 7;
const PING_PONGS = 2000;
const PIPELINED = 20_000;
const IN_FLIGHT = 64;
const runtimeModule = new URL("./_runtime_echo.ts", import.meta.url);
const workerModule = new URL("./_worker_echo.ts", import.meta.url);
const stdioModule = new URL("./_stdio_echo.ts", import.meta.url);
const payload = new TextEncoder().encode("ping");

await using kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });

async function runtimeSpawn(): Promise<number> {
  const start = performance.now();
  const pool = await kernel.runtimes.spawn({ module: runtimeModule, health: false });
  await pool.request(payload);
  const elapsed = performance.now() - start;
  await pool.close({ graceMs: 0 });
  return elapsed;
}

function workerOnce(worker: Worker, message: unknown): Promise<unknown> {
  return new Promise((resolve) => {
    worker.onmessage = (event) => resolve(event.data);
    worker.postMessage(message);
  });
}

async function workerSpawn(): Promise<number> {
  const start = performance.now();
  const worker = new Worker(workerModule, { type: "module" });
  await workerOnce(worker, payload);
  const elapsed = performance.now() - start;
  worker.terminate();
  return elapsed;
}

async function commandSpawn(): Promise<number> {
  const start = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "--no-config", stdioModule.href],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(payload);
  const reader = child.stdout.getReader();
  await reader.read();
  const elapsed = performance.now() - start;
  await writer.close();
  reader.releaseLock();
  await child.stdout.cancel();
  await child.status;
  return elapsed;
}

// 1. Spawn to first reply.
const spawnTimes: Record<string, number[]> = { runtime: [], worker: [], command: [] };
await runtimeSpawn(); // warm: the module graph is cached by the OS
await commandSpawn();
for (let round = 0; round < ROUNDS; round++) {
  spawnTimes.runtime.push(await runtimeSpawn());
  spawnTimes.worker.push(await workerSpawn());
  spawnTimes.command.push(await commandSpawn());
}
const spawnMs = Object.fromEntries(
  Object.entries(spawnTimes).map(([name, samples]) => [name, median(samples)]),
);
report("runtime_spawn_to_first_reply", spawnMs.runtime, "ms");
report("worker_spawn_to_first_message", spawnMs.worker, "ms");
report("deno_command_spawn_to_first_reply", spawnMs.command, "ms");
ratio("runtime_spawn_vs_worker", 1 / spawnMs.runtime, 1 / spawnMs.worker);
ratio("runtime_spawn_vs_deno_run", 1 / spawnMs.runtime, 1 / spawnMs.command);

// 2. Round trips.
{
  await using pool = await kernel.runtimes.spawn({ module: runtimeModule, health: false });
  const worker = new Worker(workerModule, { type: "module" });
  const ours = { serial: [] as number[], pipelined: [] as number[] };
  const anchor = { serial: [] as number[], pipelined: [] as number[] };
  const workerPipelined = (count: number) =>
    new Promise<void>((resolve) => {
      let left = count;
      let sent = 0;
      worker.onmessage = () => {
        if (--left === 0) resolve();
        else if (sent < count) {
          sent++;
          worker.postMessage(payload);
        }
      };
      for (; sent < Math.min(IN_FLIGHT, count); sent++) worker.postMessage(payload);
    });
  const runtimePipelined = async (count: number) => {
    let next = 0;
    const lane = async () => {
      while (next++ < count) await pool.request(payload);
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
  };
  for (let round = 0; round <= ROUNDS; round++) {
    let start = performance.now();
    for (let i = 0; i < PING_PONGS; i++) await pool.request(payload);
    const runtimeSerial = PING_PONGS / ((performance.now() - start) / 1000);
    start = performance.now();
    for (let i = 0; i < PING_PONGS; i++) await workerOnce(worker, payload);
    const workerSerial = PING_PONGS / ((performance.now() - start) / 1000);
    start = performance.now();
    await runtimePipelined(PIPELINED);
    const runtimePipe = PIPELINED / ((performance.now() - start) / 1000);
    start = performance.now();
    await workerPipelined(PIPELINED);
    const workerPipe = PIPELINED / ((performance.now() - start) / 1000);
    if (round === 0) continue; // warm-up
    ours.serial.push(runtimeSerial);
    anchor.serial.push(workerSerial);
    ours.pipelined.push(runtimePipe);
    anchor.pipelined.push(workerPipe);
  }
  worker.terminate();
  report("runtime_round_trips", median(ours.serial), "per_s");
  report("worker_round_trips", median(anchor.serial), "per_s");
  ratio("runtime_round_trips_vs_worker", median(ours.serial), median(anchor.serial));
  report(`runtime_round_trips_${IN_FLIGHT}_in_flight`, median(ours.pipelined), "per_s");
  report(`worker_round_trips_${IN_FLIGHT}_in_flight`, median(anchor.pipelined), "per_s");
  ratio(
    `runtime_round_trips_${IN_FLIGHT}_in_flight_vs_worker`,
    median(ours.pipelined),
    median(anchor.pipelined),
  );
}

// 3. HTTP served by a pool of 2 runtimes vs Deno.serve.
interface Server {
  port: number;
  pid: number;
  stop(): Promise<void>;
}

async function startServer(mode: string, ...args: string[]): Promise<Server> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL("./_http_server.ts", import.meta.url).href, mode, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
    env: { KREPIS_LIBRARY_PATH: libraryPath() },
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let line = "";
  while (!line.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`bench/runtimes: the ${mode} server did not start`);
    line += value;
  }
  reader.releaseLock();
  const port = /listening (\d+)/.exec(line)?.[1];
  if (port === undefined) throw new Error(`bench/runtimes: ${mode} said ${line}`);
  return {
    port: Number(port),
    pid: child.pid,
    async stop() {
      await child.stdin.close();
      await child.stdout.cancel().catch(() => {});
      await child.status;
    },
  };
}

async function wrk(port: number, seconds: number): Promise<number> {
  const output = await new Deno.Command("wrk", {
    args: ["-t1", "-c50", `-d${seconds}s`, `http://127.0.0.1:${port}/`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout);
  const rate = /Requests\/sec:\s+([\d.]+)/.exec(text)?.[1];
  if (rate === undefined) throw new Error(`bench/runtimes: wrk said ${text}`);
  return Number(rate);
}

let haveWrk = false;
try {
  haveWrk = (await new Deno.Command("wrk", { args: ["-v"], stdout: "null", stderr: "null" })
    .output()).code !== 127;
} catch {
  haveWrk = false;
}
if (!haveWrk || Deno.build.os !== "linux") {
  console.log("# http part skipped: needs Linux and wrk (apt-get install wrk)");
} else {
  const servers = {
    runtimes: await startServer("krepis-runtimes", "2"),
    deno: await startServer("deno"),
  };
  const samples: Record<string, { rate: number[]; cpu: number[] }> = {
    runtimes: { rate: [], cpu: [] },
    deno: { rate: [], cpu: [] },
  };
  try {
    for (const server of Object.values(servers)) await wrk(server.port, 1);
    for (let round = 0; round < 3; round++) {
      for (const [name, server] of Object.entries(servers)) {
        const tree = processTree(server.pid);
        const before = snapshot(tree);
        const seconds = 3;
        const rate = await wrk(server.port, seconds);
        const { totalUs } = spent(before, snapshot(processTree(server.pid)), server.pid);
        samples[name].rate.push(rate);
        samples[name].cpu.push(totalUs / (rate * seconds));
      }
    }
  } finally {
    for (const server of Object.values(servers)) await server.stop();
  }
  report("http_runtimes_pool2_rps", median(samples.runtimes.rate), "req/s");
  report("http_deno_serve_rps", median(samples.deno.rate), "req/s");
  report("http_runtimes_pool2_server_cpu", median(samples.runtimes.cpu), "us/req");
  report("http_deno_serve_server_cpu", median(samples.deno.cpu), "us/req");
  ratio(
    "http_runtimes_pool2_rps_vs_deno_serve",
    median(samples.runtimes.rate),
    median(samples.deno.rate),
  );
  ratio(
    "http_runtimes_pool2_cpu_vs_deno_serve",
    1 / median(samples.runtimes.cpu),
    1 / median(samples.deno.cpu),
  );
  console.log(
    "# 2 cores here: wrk, the parent's JS thread (which forwards each request) and the 2 runtimes",
  );
  console.log(
    "# share them, so req/s measures contention; CPU per request holds on bigger machines, where",
  );
  console.log("# the runtimes' handler work would run on their own cores in parallel.");
}
