/**
 * The HTTP engine under `wrk` (`-t1 -c50`, keep-alive, `--latency`), next to
 * `Deno.serve` and nginx in the same run:
 *
 * - `Deno.serve` hello world: the anchor.
 * - A krepis native static route (answered without entering JS).
 *   Target: ≥ 1.5× `Deno.serve` req/s.
 * - A krepis JS route (`handler: () => new Response(...)`).
 *   Target: ≥ 1× `Deno.serve` req/s with a p99 no worse.
 * - A krepis proxy route to an upstream (`Deno.serve` hello world), next to
 *   nginx (1 worker, upstream keep-alive) proxying to the same upstream.
 *   Target: ≥ 1× nginx's req/s.
 * - nginx (1 worker) answering `return 200` itself: no target, a yardstick.
 *   It shows what an optimized single-worker C server reaches on this machine
 *   with this client; when `Deno.serve` already matches it, the machine (its
 *   loopback TCP and the cores `wrk` leaves over), not the server, sets the
 *   ceiling of the static comparison.
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
  /** Socket errors, timeouts and non-2xx/3xx responses. */
  errors: number;
}

/** A server under test, stopped by `stop()`. */
interface Server {
  port: number;
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
  return { port: Number(port), stop };
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
      return { port, stop };
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
  if (rps === null || p99 === null) {
    throw new Error(`bench/http: cannot read wrk's output:\n${output}`);
  }
  let errors = 0;
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(
    output,
  );
  if (socket) errors += socket.slice(1).reduce((sum, count) => sum + Number(count), 0);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(output);
  if (non2xx) errors += Number(non2xx[1]);
  return { rps: Number(rps[1]), p99Ms: wrkMs(p99[1], p99[2]), errors };
}

async function runWrk(wrk: string, port: number, seconds: number): Promise<Sample> {
  const output = await new Deno.Command(wrk, {
    args: [
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
    for (const name of names) await runWrk(wrk, ports[name]!, 1); // warm up (JIT, pools)
    const samples = Object.fromEntries(names.map((name) => [name, [] as Sample[]])) as Record<
      Name,
      Sample[]
    >;
    for (let run = 0; run < RUNS; run++) {
      // Alternate the order so that drift during a run favours no one.
      const order = run % 2 === 0 ? names : [...names].reverse();
      for (const name of order) samples[name].push(await runWrk(wrk, ports[name]!, SECONDS));
    }

    const m: Partial<Record<Name, Sample>> = {};
    for (const name of names) {
      m[name] = {
        rps: median(samples[name].map((s) => s.rps)),
        p99Ms: median(samples[name].map((s) => s.p99Ms)),
        errors: samples[name].reduce((sum, s) => sum + s.errors, 0),
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
      report(`${metric[name]}_rps`, m[name]!.rps, "req/s");
      report(`${metric[name]}_p99`, m[name]!.p99Ms, "ms");
      if (m[name]!.errors > 0) report(`${metric[name]}_errors`, m[name]!.errors, "errors");
    }

    // Comparisons: [ours, anchor, min rps ratio, p99 must be no worse].
    const comparisons: [Name, Name, number, boolean][] = [
      ["krepisStatic", "deno", 1.5, false],
      ["krepisJs", "deno", 1, true],
      ["krepisProxy", "nginxProxy", 1, false],
    ];
    const verdicts: Partial<Record<Name, string>> = {};
    // The yardstick: how close each hello world comes to a C server's.
    const yardstick = m.nginxStatic;
    if (yardstick !== undefined) {
      for (const name of ["deno", "krepisStatic"] as const) {
        const s = m[name];
        if (s !== undefined) ratio(`${metric[name]}_vs_nginx_return_200_rps`, s.rps, yardstick.rps);
      }
      verdicts.nginxStatic = `yardstick: Deno.serve does ${
        m.deno === undefined ? "?" : (m.deno.rps / yardstick.rps).toFixed(2)
      }× this`;
    }
    for (const [ours, anchor, target, p99NoWorse] of comparisons) {
      const a = m[anchor];
      const o = m[ours];
      if (a === undefined || o === undefined) continue;
      ratio(`${metric[ours]}_vs_${metric[anchor]}_rps`, o.rps, a.rps);
      ratio(`${metric[ours]}_vs_${metric[anchor]}_p99`, 1 / o.p99Ms, 1 / a.p99Ms);
      const met = o.rps / a.rps >= target && (!p99NoWorse || o.p99Ms <= a.p99Ms) &&
        o.errors === 0;
      verdicts[ours] = `${(o.rps / a.rps).toFixed(2)}× ${LABELS[anchor]}; target ≥ ${target}×${
        p99NoWorse ? ", p99 no worse" : ""
      }: ${met ? "met" : "MISSED"}${o.errors > 0 ? ` (${o.errors} errors)` : ""}`;
    }

    // The table: `# `-prefixed so scripts reading `<metric> <value> <unit>` skip it.
    console.log(
      `# wrk -t1 -c${CONNECTIONS} -d${SECONDS}s --latency, median of ${RUNS} interleaved runs`,
    );
    const kilo = (rps: number) => (rps / 1000).toFixed(0);
    const row = (cells: string[]) =>
      console.log(
        `# ${cells[0].padEnd(24)} ${cells[1].padStart(9)} ${cells[2].padStart(13)} ${
          cells[3].padStart(8)
        }  ${cells[4]}`,
      );
    row(["server", "req/s", "runs (k req/s)", "p99 ms", "ratio and target"]);
    for (const name of Object.keys(LABELS) as Name[]) {
      const s = m[name];
      if (s === undefined) {
        row([LABELS[name], "-", "-", "-", `not measured (${unavailable[name] ?? "?"})`]);
        continue;
      }
      const anchor = name === "deno" || name === "nginxProxy" ? "anchor" : "";
      row([
        LABELS[name],
        Math.round(s.rps).toString(),
        `${kilo(Math.min(...samples[name].map((x) => x.rps)))}–${
          kilo(Math.max(...samples[name].map((x) => x.rps)))
        }`,
        s.p99Ms.toFixed(2),
        verdicts[name] ?? (anchor || "no anchor to compare with"),
      ]);
    }
  } finally {
    for (const server of servers.reverse()) await server.stop();
  }
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
