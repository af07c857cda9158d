/**
 * The floor of the crossing: how a kernel thread can wake the JS event loop
 * on this Deno, measured on one JS → kernel → JS echo per iteration (the
 * kernel's wake lab, `ffi/src/diagnostics.rs`):
 *
 * 1. `nonblocking`: JS keeps a `nonblocking` call pending; it parks a Deno
 *    blocking-pool thread on a condition variable (today's mechanism);
 * 2. `callback_thread`: a thread-safe callback called by a notifier thread;
 * 3. `callback_direct`: the waking thread calls the callback itself (and
 *    blocks until JS ran it);
 * 4. `socket`: the kernel writes one byte to a loopback TCP connection that
 *    JS reads with Deno's own async I/O (needs net permission);
 * 5. `signal`: the kernel signals the process (SIGUSR2), JS listens for it;
 * 6. `spin`: no wake — JS busy-waits on the event queues' push count (what
 *    the event pump does for a reply due soon, `bindings/_events.ts`) and
 *    the kernel thread announces a push. Needs a second core.
 *
 * For each: the one-way latency (the kernel decides to wake → JS runs, on
 * the kernel's clock), the echo's round trip, and the CPU one echo costs
 * the process and its JS thread (from `/proc`). Rounds interleave the
 * mechanisms; figures are medians of the rounds' medians. Ratios compare
 * each mechanism with `nonblocking` (> 1: faster or cheaper).
 *
 * Run: `deno task bench:wake` (`WAKE_BENCH_ROUNDS`, `WAKE_BENCH_ECHOES`).
 *
 * @module
 */

import { diagnostics } from "../tests/_diagnostics.ts";
import { Kernel } from "../mod.ts";
import { libraryPath, median, ratio, report } from "./_harness.ts";
import { snapshot, spent } from "./_cpu.ts";

const ROUNDS = Number(Deno.env.get("WAKE_BENCH_ROUNDS") ?? 5);
const ECHOES = Number(Deno.env.get("WAKE_BENCH_ECHOES") ?? 4000);

// The kernel library must be loaded (and its version checked) first.
await using _kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
const lab = diagnostics();
const clock = new BigUint64Array(2);
const now = (): number => {
  lab.krepis_debug_clock(clock);
  return Number(clock[0]);
};

type Mode = "nonblocking" | "callback_thread" | "callback_direct" | "socket" | "signal" | "spin";
const MODES: Record<Mode, number> = {
  nonblocking: 1,
  callback_thread: 2,
  callback_direct: 3,
  socket: 4,
  signal: 5,
  spin: 6,
};
const available = (Object.keys(MODES) as Mode[]).filter((mode) =>
  mode !== "signal" || Deno.build.os !== "windows"
);

interface Round {
  oneWayUs: number[];
  echoUs: number[];
  cpuUs: number;
  jsCpuUs: number;
}

/** One round of `echoes` echoes woken by `mode`. */
async function round(mode: Mode, echoes: number): Promise<Round> {
  let wake: () => void = () => {};
  const woken = () => wake();
  let callback: Deno.UnsafeCallback | null = null;
  let listener: Deno.Listener | null = null;
  let connection: Deno.Conn | null = null;
  let seen = 0;
  const buffer = new Uint8Array(64);
  if (mode === "callback_thread" || mode === "callback_direct") {
    callback = Deno.UnsafeCallback.threadSafe({ parameters: [], result: "void" } as const, woken);
  }
  if (mode === "socket") listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  if (mode === "signal") Deno.addSignalListener("SIGUSR2", woken);
  const accepted = listener?.accept();
  lab.krepis_debug_wake_lab_start(
    MODES[mode],
    callback?.pointer ?? null,
    listener === null ? 0 : (listener.addr as Deno.NetAddr).port,
  );
  if (accepted !== undefined) connection = await accepted;
  const waitForWake = async (): Promise<void> => {
    if (mode === "nonblocking") {
      seen = await lab.krepis_debug_wake_lab_wait(seen, 5000);
    } else if (connection !== null) {
      await connection.read(buffer);
    } else {
      await new Promise<void>((resolve) => wake = resolve);
    }
  };
  let pushes = lab.krepis_debug_wake_lab_spin(0, 0);
  const echo = async (): Promise<[number, number]> => {
    const start = now();
    if (mode === "spin") {
      const seenPushes = pushes;
      lab.krepis_debug_wake_lab_ping();
      while ((pushes = lab.krepis_debug_wake_lab_spin(seenPushes, 1000)) === seenPushes) {
        // The lab thread has not announced yet: keep spinning.
      }
      lab.krepis_debug_clock(clock);
      return [Number(clock[0] - clock[1]) / 1000, (Number(clock[0]) - start) / 1000];
    }
    const waiting = waitForWake();
    lab.krepis_debug_wake_lab_ping();
    await waiting;
    lab.krepis_debug_clock(clock);
    return [Number(clock[0] - clock[1]) / 1000, (Number(clock[0]) - start) / 1000];
  };
  try {
    for (let i = 0; i < 500; i++) await echo(); // warm up
    const oneWayUs: number[] = [];
    const echoUs: number[] = [];
    const before = snapshot([Deno.pid]);
    for (let i = 0; i < echoes; i++) {
      const [oneWay, total] = await echo();
      oneWayUs.push(oneWay);
      echoUs.push(total);
    }
    const { totalUs, mainThreadUs } = spent(before, snapshot([Deno.pid]), Deno.pid);
    return { oneWayUs, echoUs, cpuUs: totalUs / echoes, jsCpuUs: mainThreadUs / echoes };
  } finally {
    lab.krepis_debug_wake_lab_stop();
    if (mode === "signal") Deno.removeSignalListener("SIGUSR2", woken);
    connection?.close();
    listener?.close();
    callback?.close();
  }
}

const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
};

const results = Object.fromEntries(available.map((mode) => [mode, [] as Round[]])) as Record<
  Mode,
  Round[]
>;
for (let r = 0; r < ROUNDS; r++) {
  const order = r % 2 === 0 ? available : [...available].reverse();
  for (const mode of order) results[mode].push(await round(mode, ECHOES));
}

interface Figures {
  oneWayP50: number;
  oneWayP99: number;
  echoP50: number;
  echoP99: number;
  cpu: number;
  jsCpu: number;
}
const figures = Object.fromEntries(available.map((mode): [Mode, Figures] => {
  const rounds = results[mode];
  return [mode, {
    oneWayP50: median(rounds.map((x) => percentile(x.oneWayUs, 0.5))),
    oneWayP99: median(rounds.map((x) => percentile(x.oneWayUs, 0.99))),
    echoP50: median(rounds.map((x) => percentile(x.echoUs, 0.5))),
    echoP99: median(rounds.map((x) => percentile(x.echoUs, 0.99))),
    cpu: median(rounds.map((x) => x.cpuUs)),
    jsCpu: median(rounds.map((x) => x.jsCpuUs)),
  }];
})) as Record<Mode, Figures>;

for (const mode of available) {
  const f = figures[mode];
  report(`wake_${mode}_one_way_p50`, f.oneWayP50, "us");
  report(`wake_${mode}_one_way_p99`, f.oneWayP99, "us");
  report(`wake_${mode}_echo_p50`, f.echoP50, "us");
  report(`wake_${mode}_echo_p99`, f.echoP99, "us");
  report(`wake_${mode}_cpu_per_echo`, f.cpu, "us");
  report(`wake_${mode}_js_thread_cpu_per_echo`, f.jsCpu, "us");
}
const anchor = figures.nonblocking;
for (const mode of available.filter((mode) => mode !== "nonblocking")) {
  const f = figures[mode];
  ratio(`wake_${mode}_vs_nonblocking_one_way_p50`, 1 / f.oneWayP50, 1 / anchor.oneWayP50);
  ratio(`wake_${mode}_vs_nonblocking_echo_p50`, 1 / f.echoP50, 1 / anchor.echoP50);
  ratio(`wake_${mode}_vs_nonblocking_cpu_per_echo`, 1 / f.cpu, 1 / anchor.cpu);
}
console.log(`# ${ECHOES} echoes × ${ROUNDS} interleaved rounds; µs, medians of the rounds`);
console.log(
  "# mechanism          one-way p50   p99   echo p50   p99   CPU/echo   JS thread CPU/echo",
);
for (const mode of available) {
  const f = figures[mode];
  console.log(
    `# ${mode.padEnd(18)} ${f.oneWayP50.toFixed(1).padStart(9)} ${
      f.oneWayP99.toFixed(0).padStart(6)
    } ${f.echoP50.toFixed(1).padStart(9)} ${f.echoP99.toFixed(0).padStart(6)} ${
      f.cpu.toFixed(1).padStart(9)
    } ${f.jsCpu.toFixed(1).padStart(12)}`,
  );
}
