/**
 * The main example: open a kernel, read its stats, pass an explicit request
 * context around, close it. Run with `deno task example`.
 *
 * @module
 */

import { createContext, Kernel, KrepisError, Priority } from "../mod.ts";

const dataDir = await Deno.makeTempDir({ prefix: "krepis-example-" });
try {
  await using kernel = await Kernel.open({ workerThreads: 2, dataDir });
  console.log(`krepis kernel ${kernel.version} (ABI ${kernel.abiHash.slice(0, 12)}…)`);

  const ctx = createContext({ tenantId: "acme", priority: Priority.HIGH, timeoutMs: 1_000 });
  console.log(`request ${ctx.requestId} for tenant ${ctx.tenantId}`);

  const stats = kernel.stats();
  console.log(
    `kernel #${stats.kernelId}: ${stats.workerThreads} workers, up ${
      stats.uptimeMs.toFixed(2)
    } ms, data in ${stats.dataDir}`,
  );

  // Zero-copy shared memory: JS writes kernel-owned bytes in place.
  {
    using buffer = kernel.buffers.alloc(1024);
    buffer.bytes.set(new TextEncoder().encode("hello kernel"));
    console.log(`shared buffer: ${kernel.stats().buffers.liveBytes} bytes live`);
  }
  console.log(`after release: ${kernel.stats().buffers.liveBuffers} buffers live`);

  // The store: synchronous reads and writes, atomic journaled commits.
  kernel.store.put("greeting", "hello");
  {
    using value = kernel.store.get("greeting");
    console.log(`store: greeting = ${value?.text()}`);
  }
  const { txId } = await kernel.store.commit(
    [{ type: "put", key: "user:1", value: JSON.stringify({ name: "Ada" }) }],
    { ctx, checks: [{ key: "user:1", value: null }] },
  );
  const [record] = kernel.journal.read({ since: txId });
  console.log(`journal: tx ${record.txId} by tenant ${record.ctx?.tenantId}`);
  await kernel.journal.undo(txId, { ctx });
  console.log(`after undo: user:1 exists = ${kernel.store.has("user:1")}`);

  // The guard: an untrusted command in an isolated, limited child process.
  const guarded = await kernel.guard.run({
    cmd: Deno.execPath(),
    args: ["--version"],
    policy: { timeoutMs: 5_000, maxOutputBytes: 64 * 1024 },
  });
  console.log(
    `guard: exit ${guarded.code}, "${new TextDecoder().decode(guarded.stdout).split("\n")[0]}", ` +
      `isolation ${guarded.isolation.applied.join(", ")}`,
  );

  // KNUL: an encrypted packet link (QUIC + TLS 1.3) between two kernels.
  {
    await using peer = await Kernel.open({ dataDir: null });
    const { cert, key } = peer.transport.createDevCertificate();
    await using listener = await peer.transport.listen({ cert, key });
    const connecting = kernel.transport.connect({
      hostname: "127.0.0.1",
      port: listener.addr.port,
      serverName: "localhost",
      caCerts: [cert],
    });
    await using server = (await listener.accept())!;
    await using link = await connecting;
    await link.send(new TextEncoder().encode("ping"), { ctx });
    const packet = (await server.receive())!;
    console.log(
      `transport: "${new TextDecoder().decode(packet.data)}" from ${server.remoteAddr.hostname}, ` +
        `priority ${packet.priority}, rtt ${link.stats().rttMs.toFixed(2)} ms`,
    );
  }

  // HTTP: a static route answered by the kernel, the rest by a JS handler.
  {
    await using server = kernel.http.serve({
      hostname: "127.0.0.1",
      port: 0,
      routes: [{ match: { path: "/health" }, respond: { body: "ok" } }],
      handler: (request, info) =>
        new Response(`${request.method} ${new URL(request.url).pathname} (${info.httpVersion})`),
    });
    const base = `http://127.0.0.1:${server.addr.port}`;
    const health = await (await fetch(`${base}/health`)).text();
    const hello = await (await fetch(`${base}/hello`)).text();
    console.log(`http: /health → "${health}", /hello → "${hello}"`);
  }

  // Errors are typed and say what was wrong.
  try {
    await Kernel.open({ workerThreads: 100_000, dataDir: null });
  } catch (error) {
    if (!(error instanceof KrepisError)) throw error;
    console.log(`refused as expected: ${error.code}: ${error.message}`);
  }
} finally {
  await Deno.remove(dataDir, { recursive: true });
}
