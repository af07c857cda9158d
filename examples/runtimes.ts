/**
 * Runtimes: a pool of two sandboxed Deno children answering requests and an
 * HTTP route, one of them crashing and being restarted. Run with
 * `deno run -A examples/runtimes.ts` (KREPIS_LIBRARY_PATH set to a local
 * build, as `deno task example` does).
 *
 * @module
 */

import { createContext, Kernel, RuntimeError } from "../mod.ts";

await using kernel = await Kernel.open({ dataDir: null });
await using pool = await kernel.runtimes.spawn({
  module: new URL("./runtimes_plugin.ts", import.meta.url),
  instances: 2,
  permissions: {}, // no file, network, env or subprocess access
  policy: { maxMemoryBytes: 256 << 20 },
  restart: { maxRestarts: 3, backoffMs: 100 },
});
const events = (async () => {
  for await (const event of pool.events()) {
    if (event.type === "exited") {
      console.log(
        `instance ${event.instance} exited (${event.code ?? event.signal}): ${event.reason}`,
      );
    } else if (event.type === "message") {
      console.log(`instance ${event.instance} says ${new TextDecoder().decode(event.data)}`);
    } else {
      console.log(`${event.type} instance ${event.instance}`);
    }
  }
})();

const ctx = createContext({ tenantId: "acme", timeoutMs: 5_000 });
const reply = await pool.request("hello", { ctx });
console.log(new TextDecoder().decode(reply));

try {
  await pool.request("crash", { ctx });
} catch (error) {
  if (error instanceof RuntimeError) console.log(`failed as expected: ${error.details.reason}`);
}

const server = kernel.http.serve({ hostname: "127.0.0.1", port: 0, handler: pool });
const response = await fetch(`http://127.0.0.1:${server.addr.port}/greet`);
console.log(await response.text());
await server.shutdown();

for (const instance of pool.stats().instances) {
  console.log(
    `instance ${instance.instance}: pid ${instance.pid}, ${instance.requests} requests, ` +
      `${instance.restarts} restarts, ${instance.cpuMs} ms CPU, ${instance.rssBytes >> 20} MiB`,
  );
}
await pool.close();
await events;
