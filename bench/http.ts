/**
 * The HTTP engine under `wrk` (`-t1 -c50`, keep-alive, `--latency`), next to
 * `Deno.serve` and nginx in the same run:
 *
 * - `Deno.serve` hello world: the anchor.
 * - A krepis native static route (answered without entering JS).
 * - A krepis JS route (`handler: () => new Response(...)`).
 * - A krepis proxy route to an upstream (`Deno.serve` hello world), next to
 *   nginx (1 worker, upstream keep-alive) proxying to the same upstream.
 * - nginx (1 worker) answering `return 200` itself: a yardstick. It shows
 *   what an optimized single-worker C server reaches on this machine.
 *
 * Each server is measured twice per run:
 * - unpinned: req/s and p99 (on a machine with few cores this mostly
 *   measures the client and the loopback stack);
 * - pinned (Linux, `taskset`): the server's threads on one core, `wrk` on
 *   another: req/s, and the server's CPU time per request (utime + stime of
 *   every thread ÷ requests), in all and on its main thread (the JS thread
 *   of a Deno server). CPU per request holds on any machine.
 *
 * Goals (each a `ratio` line, > 1 means krepis wins; the table says met or
 * missed): JS route total CPU per request ≤ 1.5× `Deno.serve`'s, its JS
 * thread's CPU per request ≤ 0.5× `Deno.serve`'s thread, pinned req/s ≥
 * 0.67× and p99 ≤ 2× `Deno.serve`'s; static route CPU per request within
 * 1.1× of `Deno.serve`'s and nginx's; proxy route ≥ nginx's req/s.
 *
 * Every server runs in its own process (`bench/_http_server.ts`, or nginx), so
 * the process measured only serves; this process only drives `wrk`. Each run
 * measures every server once, in turn (the order alternates between runs);
 * figures are medians of the runs.
 * Ratios are ours ÷ anchor (> 1 means krepis wins; for p99, anchor ÷ ours).
 *
 * Needs `wrk` (`apt-get install wrk`; skipped with a hint when missing) and,
 * for the proxy comparison, `nginx` (`apt-get install nginx`; that comparison
 * is skipped with a hint when missing; `NGINX=/path/to/nginx` picks a binary).
 * nginx runs as the current user from a temporary prefix; it needs no root.
 *
 * Run: `deno task bench:http` (`HTTP_BENCH_RUNS`, `HTTP_BENCH_SECONDS` override
 * the 5 runs of 3 s).
 *
 * @module
 */

import { libraryPath, median, ratio, report } from "./_harness.ts";
import { cpuAccountingAvailable, cpuCount, pin, processTree, snapshot, spent } from "./_cpu.ts";

const RUNS = Number(Deno.env.get("HTTP_BENCH_RUNS") ?? 5);
const SECONDS = Number(Deno.env.get("HTTP_BENCH_SECONDS") ?? 3);
const CONNECTIONS = 50;
const HOSTNAME = "127.0.0.1";
const BODY = "Hello, World!";
const STARTUP_TIMEOUT_MS = 30_000;

type Name = "deno" | "nginxStatic" | "krepisStatic" | "krepisJs" | "nginxProxy" | "krepisProxy";

const LABELS: Record<Name, string> = {
  deno: "Deno.serve hello world",
  nginxStatic: "nginx return 200",
  krepisStatic: "krepis static route",
  krepisJs: "krepis JS route",
  nginxProxy: "nginx proxy",
  krepisProxy: "krepis proxy route",
};

/** One wrk result. */
interface Sample {
  rps: number;
  p99Ms: number;
  /** Requests completed. */
  requests: number;
  /** Socket errors, timeouts and non-2xx/3xx responses. */
  errors: number;
}

/** One pinned run: wrk's result and the server's CPU. */
interface PinnedSample extends Sample {
  /** Server CPU µs per request, all threads. */
  cpuUs: number;
  /** Server CPU µs per request on its main (JS) thread. */
  mainThreadCpuUs: number;
}

/** A server under test, stopped by `stop()`. */
interface Server {
  port: number;
  /** The server's process (its descendants are measured too). */
  pid: number;
  stop(): Promise<void>;
}

/** Thrown (and reported, not fatal) when the kernel has no HTTP engine on this platform. */
class Unsupported extends Error {}

/** An executable named `name` on PATH or at one of `extra`, if any. */
function findExecutable(name: string, extra: string[] = []): string | undefined {
  const separator = Deno.build.os === "windows" ? ";" : ":";
  const dirs = (Deno.env.get("PATH") ?? "").split(separator).filter((dir) => dir !== "");
  const candidates = [...dirs.map((dir) => `${dir}/${name}`), ...extra];
  for (const candidate of candidates) {
    try {
      const info = Deno.statSync(candidate);
      if (info.isFile && (info.mode === null || (info.mode & 0o111) !== 0)) return candidate;
    } catch { /* not there */ }
  }
  return undefined;
}

/** Reads `stream` until a whole first line arrived; returns it and releases the stream. */
async function firstLine(stream: ReadableStream<Uint8Array>): Promise<string | null> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  try {
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) return text === "" ? null : text;
      text += value;
    }
    return text.slice(0, text.indexOf("\n"));
  } finally {
    // Keep draining in the background so the child never blocks on a full pipe.
    void (async () => {
      try {
        while (!(await reader.read()).done) { /* discard */ }
      } catch { /* the child exited */ }
    })();
  }
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`bench/http: ${what} timed out`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts `bench/_http_server.ts <mode>` in its own Deno process. It serves
 * until its stdin closes.
 */
async function startDenoChild(mode: string, ...args: string[]): Promise<Server> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      "--unstable-net",
      new URL("./_http_server.ts", import.meta.url).href,
      mode,
      ...args,
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const stop = async () => {
    try {
      await child.stdin.close();
    } catch { /* already closed */ }
    const exited = await Promise.race([
      child.status.then(() => true),
      new Promise<false>((resolve) => setTimeout(() => resolve(false), 5000)),
    ]);
    if (!exited) {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
    }
  };
  let line: string | null;
  try {
    line = await withTimeout(firstLine(child.stdout), STARTUP_TIMEOUT_MS, `starting ${mode}`);
  } catch (error) {
    await stop();
    throw error;
  }
  const port = /^listening (\d+)$/.exec(line?.trim() ?? "")?.[1];
  if (port === undefined) {
    await stop();
    if (line?.startsWith("unsupported ")) throw new Unsupported(line.slice(12));
    throw new Error(
      `bench/http: the ${mode} server did not start (${
        line === null ? "it exited; see its error above" : `it said: ${line}`
      })`,
    );
  }
  return { port: Number(port), pid: child.pid, stop };
}

function freePort(): number {
  const listener = Deno.listen({ hostname: HOSTNAME, port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/**
 * nginx (one worker) from a temporary prefix: proxying to
 * `127.0.0.1:upstreamPort`, or answering the hello world itself when
 * `upstreamPort` is null.
 */
async function startNginx(nginx: string, upstreamPort: number | null): Promise<Server> {
  const dir = await Deno.makeTempDir({ prefix: "krepis-bench-nginx-" });
  const port = freePort();
  const upstream = upstreamPort === null ? "" : `  upstream u {
    server ${HOSTNAME}:${upstreamPort};
    keepalive 64;
    keepalive_requests 1000000;
  }
`;
  const location = upstreamPort === null
    ? `      default_type "text/plain;charset=UTF-8";
      return 200 "${BODY}";`
    : `      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";`;
  // Keep-alive both ways, and no per-connection request cap (nginx's default
  // of 1000 would make wrk reconnect; Deno.serve and krepis have no cap).
  const conf = `daemon off;
worker_processes 1;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
${upstream}  server {
    listen ${HOSTNAME}:${port};
    location / {
${location}
    }
  }
}
`;
  await Deno.writeTextFile(`${dir}/nginx.conf`, conf);
  const child = new Deno.Command(nginx, {
    // -e: the startup error log (before the conf is read) also goes to the prefix.
    args: ["-p", dir, "-c", `${dir}/nginx.conf`, "-e", `${dir}/error.log`],
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const stop = async () => {
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
    }
    await status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (true) {
    try {
      (await Deno.connect({ hostname: HOSTNAME, port })).close();
      return { port, pid: child.pid, stop };
    } catch { /* not yet */ }
    if (exited || Date.now() > deadline) {
      const log = await Deno.readTextFile(`${dir}/error.log`).catch(() => "");
      await stop();
      throw new Error(`bench/http: nginx did not start:\n${log}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Checks that `port` answers GET / with 200 and the hello-world body. */
async function checkHello(name: Name, port: number): Promise<void> {
  const response = await fetch(`http://${HOSTNAME}:${port}/`);
  const body = await response.text();
  if (response.status !== 200 || body !== BODY) {
    throw new Error(
      `bench/http: ${LABELS[name]} answered ${response.status} ${JSON.stringify(body)}`,
    );
  }
}

/** Milliseconds of a wrk duration such as `950.00us`, `1.20ms`, `2.00s`. */
function wrkMs(value: string, unit: string): number {
  const factor: Record<string, number> = { us: 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3 };
  if (!(unit in factor)) throw new Error(`bench/http: unknown wrk time unit ${unit}`);
  return Number(value) * factor[unit];
}

/** Parses wrk's `--latency` report. */
export function parseWrk(output: string): Sample {
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(output);
  const p99 = /^\s+99%\s+([\d.]+)(us|ms|s|m|h)\s*$/m.exec(output);
  const requests = /^\s*(\d+) requests in /m.exec(output);
  if (rps === null || p99 === null || requests === null) {
    throw new Error(`bench/http: cannot read wrk's output:\n${output}`);
  }
  let errors = 0;
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(
    output,
  );
  if (socket) errors += socket.slice(1).reduce((sum, count) => sum + Number(count), 0);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(output);
  if (non2xx) errors += Number(non2xx[1]);
  return {
    rps: Number(rps[1]),
    p99Ms: wrkMs(p99[1], p99[2]),
    requests: Number(requests[1]),
    errors,
  };
}

/** Runs wrk against `port`; on `cpu` (e.g. "1") when given. */
async function runWrk(
  wrk: string,
  port: number,
  seconds: number,
  cpu?: string,
): Promise<Sample> {
  const command = cpu === undefined ? wrk : "taskset";
  const output = await new Deno.Command(command, {
    args: [
      ...(cpu === undefined ? [] : ["-c", cpu, wrk]),
      "-t1",
      `-c${CONNECTIONS}`,
      `-d${seconds}s`,
      "--latency",
      `http://${HOSTNAME}:${port}/`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout);
  if (!output.success) {
    throw new Error(`bench/http: wrk failed:\n${text}${new TextDecoder().decode(output.stderr)}`);
  }
  return parseWrk(text);
}

/**
 * One pinned run: the server's processes on CPU 0, wrk on CPU 1, the
 * server's CPU per request from its threads' times; unpinned afterwards.
 */
async function runPinned(wrk: string, server: Server, seconds: number): Promise<PinnedSample> {
  const pids = processTree(server.pid);
  await pin(pids, "0");
  try {
    const before = snapshot(pids);
    const sample = await runWrk(wrk, server.port, seconds, "1");
    const { totalUs, mainThreadUs } = spent(before, snapshot(pids), server.pid);
    return {
      ...sample,
      cpuUs: totalUs / sample.requests,
      mainThreadCpuUs: mainThreadUs / sample.requests,
    };
  } finally {
    await pin(pids, `0-${cpuCount() - 1}`);
  }
}

async function main(): Promise<number> {
  const wrk = findExecutable("wrk");
  if (wrk === undefined) {
    console.log(
      "skipped: wrk not found (install it: `apt-get install wrk` on Debian/Ubuntu, " +
        "`brew install wrk` on macOS)",
    );
    return 0;
  }
  libraryPath(); // fails early, with the fix, when not run through `deno task bench`
  const nginx = Deno.env.get("NGINX") ??
    findExecutable("nginx", [
      "/usr/sbin/nginx",
      "/usr/local/sbin/nginx",
      "/usr/local/bin/nginx",
      "/opt/homebrew/bin/nginx",
    ]);

  const servers: Server[] = [];
  const ports: Partial<Record<Name, number>> = {};
  const unavailable: Partial<Record<Name, string>> = {};
  let failed = false;
  const start = async (name: Name, starting: () => Promise<Server>) => {
    try {
      const server = await starting();
      servers.push(server);
      await checkHello(name, server.port);
      ports[name] = server.port;
    } catch (error) {
      unavailable[name] = error instanceof Unsupported
        ? `unsupported: ${error.message}`
        : (error as Error).message;
      if (!(error instanceof Unsupported)) failed = true;
      console.error(`${LABELS[name]}: ${unavailable[name]}`);
    }
  };
  try {
    await start("deno", () => startDenoChild("deno"));
    const upstream = await startDenoChild("deno");
    servers.push(upstream);
    await start("krepisStatic", () => startDenoChild("krepis-static"));
    await start("krepisJs", () => startDenoChild("krepis-js"));
    if (nginx === undefined) {
      unavailable.nginxStatic = "nginx not found";
      unavailable.nginxProxy = "nginx not found";
      console.log(
        "nginx not found: skipping the proxy comparison (install it: `apt-get install nginx` " +
          "on Debian/Ubuntu, `brew install nginx` on macOS, or set NGINX=/path/to/nginx)",
      );
    } else {
      await start("nginxStatic", () => startNginx(nginx, null));
      await start("nginxProxy", () => startNginx(nginx, upstream.port));
    }
    await start("krepisProxy", () => startDenoChild("krepis-proxy", String(upstream.port)));
    if (ports.deno === undefined) {
      throw new Error("bench/http: the Deno.serve anchor did not start");
    }

    const names = (Object.keys(LABELS) as Name[]).filter((name) => ports[name] !== undefined);
    const byName = Object.fromEntries(
      servers.flatMap((server) => {
        const name = names.find((n) => ports[n] === server.port);
        return name === undefined ? [] : [[name, server]];
      }),
    ) as Record<Name, Server>;
    const pinning = cpuAccountingAvailable() && cpuCount() >= 2;
    if (!pinning) {
      console.log("# pinned runs skipped: they need Linux, taskset and at least 2 CPUs");
    }
    for (const name of names) await runWrk(wrk, ports[name]!, 1); // warm up (JIT, pools)
    const samples = Object.fromEntries(names.map((name) => [name, [] as Sample[]])) as Record<
      Name,
      Sample[]
    >;
    const pinned = Object.fromEntries(names.map((name) => [name, [] as PinnedSample[]])) as Record<
      Name,
      PinnedSample[]
    >;
    for (let run = 0; run < RUNS; run++) {
      // Alternate the order so that drift during a run favours no one.
      const order = run % 2 === 0 ? names : [...names].reverse();
      for (const name of order) {
        samples[name].push(await runWrk(wrk, ports[name]!, SECONDS));
        if (pinning) pinned[name].push(await runPinned(wrk, byName[name], SECONDS));
      }
    }

    interface Figures {
      rps: number;
      p99Ms: number;
      errors: number;
      pinnedRps?: number;
      cpuUs?: number;
      mainThreadCpuUs?: number;
    }
    const m: Partial<Record<Name, Figures>> = {};
    for (const name of names) {
      const p = pinned[name];
      m[name] = {
        rps: median(samples[name].map((s) => s.rps)),
        p99Ms: median(samples[name].map((s) => s.p99Ms)),
        errors: [...samples[name], ...p].reduce((sum, s) => sum + s.errors, 0),
        ...(p.length === 0 ? {} : {
          pinnedRps: median(p.map((s) => s.rps)),
          cpuUs: median(p.map((s) => s.cpuUs)),
          mainThreadCpuUs: median(p.map((s) => s.mainThreadCpuUs)),
        }),
      };
    }

    const metric: Record<Name, string> = {
      deno: "deno_serve_hello",
      nginxStatic: "nginx_return_200",
      krepisStatic: "krepis_static_route",
      krepisJs: "krepis_js_route",
      nginxProxy: "nginx_proxy",
      krepisProxy: "krepis_proxy_route",
    };
    for (const name of names) {
      const f = m[name]!;
      report(`${metric[name]}_rps`, f.rps, "req/s");
      report(`${metric[name]}_p99`, f.p99Ms, "ms");
      if (f.pinnedRps !== undefined) {
        report(`${metric[name]}_pinned_rps`, f.pinnedRps, "req/s");
        report(`${metric[name]}_cpu_per_request`, f.cpuUs!, "us");
        report(`${metric[name]}_main_thread_cpu_per_request`, f.mainThreadCpuUs!, "us");
      }
      if (f.errors > 0) report(`${metric[name]}_errors`, f.errors, "errors");
    }

    // Goals: [ours, anchor, figure, minimum ratio]; every ratio is > 1 when
    // krepis wins (for CPU and p99: anchor ÷ ours).
    type Figure = "rps" | "pinnedRps" | "cpu" | "mainThreadCpu" | "p99";
    const goals: [Name, Name, Figure, number][] = [
      ["krepisJs", "deno", "cpu", 1 / 1.5],
      ["krepisJs", "deno", "mainThreadCpu", 2],
      ["krepisJs", "deno", "pinnedRps", 0.67],
      ["krepisJs", "deno", "p99", 0.5],
      ["krepisStatic", "deno", "cpu", 1 / 1.1],
      ["krepisStatic", "nginxStatic", "cpu", 1 / 1.1],
      ["krepisProxy", "nginxProxy", "rps", 1],
    ];
    const value = (f: Figures, figure: Figure): number | undefined =>
      ({
        rps: f.rps,
        pinnedRps: f.pinnedRps,
        cpu: f.cpuUs === undefined ? undefined : 1 / f.cpuUs,
        mainThreadCpu: f.mainThreadCpuUs === undefined ? undefined : 1 / f.mainThreadCpuUs,
        p99: 1 / f.p99Ms,
      })[figure];
    const figureName: Record<Figure, string> = {
      rps: "rps",
      pinnedRps: "pinned_rps",
      cpu: "cpu_per_request",
      mainThreadCpu: "main_thread_cpu_per_request",
      p99: "p99",
    };
    const verdicts: Partial<Record<Name, string[]>> = {};
    const yardstick = m.nginxStatic;
    if (yardstick !== undefined) {
      for (const name of ["deno", "krepisStatic"] as const) {
        const s = m[name];
        if (s !== undefined) ratio(`${metric[name]}_vs_nginx_return_200_rps`, s.rps, yardstick.rps);
      }
    }
    for (const [ours, anchor, figure, target] of goals) {
      const [o, a] = [m[ours], m[anchor]];
      if (o === undefined || a === undefined) continue;
      const [ov, av] = [value(o, figure), value(a, figure)];
      if (ov === undefined || av === undefined) continue;
      ratio(`${metric[ours]}_vs_${metric[anchor]}_${figureName[figure]}`, ov, av);
      const met = ov / av >= target && o.errors === 0;
      (verdicts[ours] ??= []).push(
        `${figureName[figure]} ${(ov / av).toFixed(2)} vs ${LABELS[anchor]} (goal ≥ ${
          target.toFixed(2)
        }): ${met ? "met" : "MISSED"}`,
      );
    }

    // The table: `# `-prefixed so scripts reading `<metric> <value> <unit>` skip it.
    console.log(
      `# wrk -t1 -c${CONNECTIONS} -d${SECONDS}s --latency, median of ${RUNS} interleaved runs` +
        (pinning ? "; pinned: server on CPU 0, wrk on CPU 1" : ""),
    );
    const row = (cells: string[]) =>
      console.log(
        `# ${cells[0].padEnd(24)} ${cells[1].padStart(8)} ${cells[2].padStart(7)} ${
          cells[3].padStart(8)
        } ${cells[4].padStart(8)} ${cells[5].padStart(8)}`,
      );
    row(["server", "req/s", "p99 ms", "pinned", "CPU µs", "main µs"]);
    for (const name of Object.keys(LABELS) as Name[]) {
      const f = m[name];
      if (f === undefined) {
        console.log(`# ${LABELS[name].padEnd(24)} not measured (${unavailable[name] ?? "?"})`);
        continue;
      }
      row([
        LABELS[name],
        Math.round(f.rps).toString(),
        f.p99Ms.toFixed(2),
        f.pinnedRps === undefined ? "-" : Math.round(f.pinnedRps).toString(),
        f.cpuUs === undefined ? "-" : f.cpuUs.toFixed(2),
        f.mainThreadCpuUs === undefined ? "-" : f.mainThreadCpuUs.toFixed(2),
      ]);
      for (const verdict of verdicts[name] ?? []) console.log(`#     ${verdict}`);
    }
  } finally {
    for (const server of servers.reverse()) await server.stop();
  }
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
