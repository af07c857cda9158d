/**
 * One HTTP server for `bench/http.ts`, run in its own Deno process so that the
 * process being measured only serves (the benchmark driver and `wrk` live
 * elsewhere):
 *
 *   deno run -A bench/_http_server.ts deno                 # Deno.serve hello world
 *   deno run -A bench/_http_server.ts krepis-static        # native static route
 *   deno run -A bench/_http_server.ts krepis-js            # JS handler
 *   deno run -A bench/_http_server.ts krepis-proxy PORT    # proxy to 127.0.0.1:PORT
 *   deno run -A bench/_http_server.ts krepis-runtimes N    # a pool of N runtimes answers
 *
 * Prints one line on stdout once it listens: `listening <port>` (or
 * `unsupported <message>` when the kernel has no HTTP engine on this
 * platform), then serves until its stdin closes, and exits.
 *
 * @module
 */

import { Kernel, UnsupportedError } from "../mod.ts";
import { libraryPath } from "./_harness.ts";

const HOSTNAME = "127.0.0.1";
const BODY = "Hello, World!";

/** Resolves when stdin reaches end of file (the driver closed it or died). */
async function stdinClosed(): Promise<void> {
  const buffer = new Uint8Array(64);
  while ((await Deno.stdin.read(buffer)) !== null) { /* ignore input */ }
}

async function serveDeno(): Promise<void> {
  const controller = new AbortController();
  const server = Deno.serve({
    hostname: HOSTNAME,
    port: 0,
    signal: controller.signal,
    onListen: ({ port }) => console.log(`listening ${port}`),
  }, () => new Response(BODY));
  await stdinClosed();
  controller.abort();
  await server.finished;
}

async function serveKrepis(mode: string, upstreamPort: number): Promise<void> {
  const workerThreads = Number(Deno.env.get("KREPIS_BENCH_WORKERS") ?? 0) || undefined;
  await using kernel = await Kernel.open({
    libraryPath: libraryPath(),
    dataDir: null,
    workerThreads,
  });
  const base = { hostname: HOSTNAME, port: 0 };
  const pool = mode === "krepis-runtimes"
    ? await kernel.runtimes.spawn({
      module: new URL("./_runtime_echo.ts", import.meta.url),
      instances: upstreamPort || 2,
    })
    : null;
  const serve = () => {
    switch (mode) {
      case "krepis-static":
        return kernel.http.serve({
          ...base,
          routes: [{ match: { path: "/" }, respond: { status: 200, body: BODY } }],
        });
      case "krepis-js":
        return kernel.http.serve({ ...base, handler: () => new Response(BODY) });
      case "krepis-runtimes":
        return kernel.http.serve({ ...base, handler: pool! });
      case "krepis-proxy":
        return kernel.http.serve({
          ...base,
          routes: [{
            match: { pathPrefix: "/" },
            proxy: { upstreams: [`${HOSTNAME}:${upstreamPort}`] },
          }],
        });
      default:
        throw new Error(`bench/_http_server: unknown mode ${mode}`);
    }
  };
  let server;
  try {
    server = serve();
  } catch (error) {
    if (error instanceof UnsupportedError) {
      console.log(`unsupported ${error.message}`);
      return;
    }
    throw error;
  }
  console.log(`listening ${server.addr.port}`);
  await stdinClosed();
  await server.shutdown({ graceMs: 1000 });
  await pool?.close();
}

if (import.meta.main) {
  const [mode = "deno", upstream = "0"] = Deno.args;
  if (mode === "deno") await serveDeno();
  else await serveKrepis(mode, Number(upstream));
}
