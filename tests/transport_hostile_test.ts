// KNUL against hostile peers (issue #16): window floods against the link and
// memory budgets, slow-hello floods against handshake admission, a peer that
// stops reading against close()'s bound, and a valid packet followed by a
// malformed header in one read. Real kernels and processes, real QUIC over
// loopback; raw peers are Deno's own QUIC (tests/_quic_peer.ts).
import assert from "node:assert/strict";
import { ConnectionError, Kernel, type Link, type Listener, ProtocolError } from "../mod.ts";
import { encodeKnulHeader, KnulKind } from "../bindings/transport/_knul.ts";
import { connectRawPeer, type RawBiStream, type RawPeer } from "./_quic_peer.ts";
import { fixture, libraryPath } from "./_helpers.ts";

const libraryOptions = { dataDir: null, libraryPath: libraryPath() };
const MIB = 1 << 20;
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** This process's resident memory, in bytes (Linux). */
function rss(): number {
  const status = Deno.readTextFileSync("/proc/self/status");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

/** Accepts links until the listener closes, never reading them. */
function acceptAll(listener: Listener, into: Link[]): Promise<void> {
  return (async () => {
    for await (const link of listener) into.push(link);
  })();
}

function packet(kind: number, payload: Uint8Array, flags = 1): Uint8Array {
  const header = encodeKnulHeader({
    version: 1,
    kind,
    flags,
    priority: 128,
    payloadLength: payload.length,
    tenant: 0n,
    traceId: new Uint8Array(16),
  });
  const bytes = new Uint8Array(header.length + payload.length);
  bytes.set(header);
  bytes.set(payload, header.length);
  return bytes;
}

/** Completes TLS and the hello exchange as a raw peer. */
async function rawLinked(port: number, cert: string): Promise<[RawPeer, RawBiStream]> {
  const raw = await connectRawPeer({
    hostname: "127.0.0.1",
    port,
    caCert: cert,
    serverName: "localhost",
  });
  const control = await raw.openBi();
  await control.write(packet(KnulKind.hello, new Uint8Array([0, 0, 16, 0, 1])));
  let have = 0;
  while (have < 45) {
    const chunk = await control.read();
    assert.ok(chunk !== null, "the server answered the hello");
    have += chunk.length;
  }
  return [raw, control];
}

Deno.test({
  name:
    "transport hostile: 100 peers fill their windows while the app does not read: the kernel stays within its budget, refuses and counts the rest, and gives the memory back",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const budget = 256 * MIB;
    // At the default 1 MiB maxPacketBytes a link is charged its 8 MiB ring
    // and 2.5× its QUIC windows (8 MiB + 64 KiB) and datagram buffer (256 KiB).
    const charge = 8 * MIB + (8 * MIB + 64 * 1024 + 256 * 1024) * 5 / 2;
    const fit = Math.floor(budget / charge);
    const kernel = await Kernel.open({ ...libraryOptions, transport: { maxWindowBytes: budget } });
    const { cert, key } = kernel.transport.createDevCertificate();
    const listener = await kernel.transport.listen({ cert, key });
    const certFile = Deno.makeTempFileSync({ suffix: ".pem" });
    Deno.writeTextFileSync(certFile, cert);
    const links: Link[] = [];
    const accepting = acceptAll(listener, links);
    const baseline = rss();
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        fixture("knul_fillers.ts"),
        String(listener.addr.port),
        "100",
        certFile,
      ],
      env: { KREPIS_LIBRARY_PATH: libraryPath() },
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    try {
      const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let text = "";
      while (!text.includes("\n")) {
        const { value, done } = await lines.read();
        if (done) throw new Error("the filler process exited early");
        text += value;
      }
      lines.releaseLock();
      void child.stdout.cancel().catch(() => {});
      const peers = JSON.parse(text.split("\n")[0]);
      assert.equal(peers.connected, fit, JSON.stringify(peers));
      assert.deepEqual(peers.refusedCodes, { "6": 100 - fit }, "refused with code 6 (busy)");
      // Let every accepted link fill its ring (7 packets of 1 MiB) and QUIC window.
      for (let round = 0; round < 200; round++) {
        if (links.length === fit && links.every((link) => link.stats().packetsReceived >= 7)) break;
        await delay(50);
      }
      assert.equal(links.length, fit);
      await delay(500); // and QUIC's window behind it
      const stats = kernel.stats().transport;
      const peak = rss();
      console.log(
        `flood: ${fit} links, windowBytes ${stats.windowBytes}, budget ${budget}, rss +${
          ((peak - baseline) / MIB).toFixed(1)
        } MiB`,
      );
      assert.equal(stats.windowBytes, fit * charge);
      assert.ok(stats.windowBytes <= budget);
      assert.equal(stats.linksRefused, 100 - fit);
      const listenerStats = listener.stats();
      assert.equal(listenerStats.refusedOverBudget, 100 - fit);
      assert.equal(listenerStats.links, fit);
      assert.ok(peak - baseline < budget + 64 * MIB, `rss grew ${(peak - baseline) / MIB} MiB`);
      // The peers go (their process exits without closing); the application
      // learns its links ended and frees them.
      await child.stdin.close();
      assert.equal((await child.status).code, 0);
      for (const link of links) {
        const ended = await link.ended;
        assert.ok(ended.error instanceof ConnectionError, String(ended.error));
        await link.close();
      }
      assert.equal(kernel.stats().transport.windowBytes, 0);
      let after = rss();
      for (let round = 0; round < 50 && after - baseline > 48 * MIB; round++) {
        await delay(100);
        after = rss();
      }
      console.log(`after: rss +${((after - baseline) / MIB).toFixed(1)} MiB over the baseline`);
      assert.ok(after - baseline < 48 * MIB, `rss still ${(after - baseline) / MIB} MiB over`);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
      listener.close();
      await accepting;
      await kernel.close();
      Deno.removeSync(certFile);
    }
  },
});

/** `count` raw peers that complete TLS and never send a hello. */
async function slowHellos(port: number, cert: string, count: number): Promise<RawPeer[]> {
  const peers: RawPeer[] = [];
  for (let at = 0; at < count; at += 50) {
    const batch = await Promise.all(
      Array.from(
        { length: Math.min(50, count - at) },
        () =>
          connectRawPeer({ hostname: "127.0.0.1", port, caCert: cert, serverName: "localhost" }),
      ),
    );
    peers.push(...batch);
  }
  return peers;
}

async function timedConnect(client: Kernel, listener: Listener, cert: string) {
  const started = performance.now();
  const connecting = client.transport.connect({
    hostname: "127.0.0.1",
    port: listener.addr.port,
    serverName: "localhost",
    caCerts: [cert],
  });
  const link = await connecting;
  const elapsed = performance.now() - started;
  const peer = (await listener.accept())!;
  await link.send(new TextEncoder().encode("through"));
  assert.equal(new TextDecoder().decode((await peer.receive())!.data), "through");
  await Promise.all([link.close(), peer.close()]);
  return elapsed;
}

Deno.test("transport hostile: a legitimate connect during a 300-connection slow-hello flood completes in under 1 s", async () => {
  await using server = await Kernel.open(libraryOptions);
  await using client = await Kernel.open(libraryOptions);
  const { cert, key } = server.transport.createDevCertificate();
  await using listener = await server.transport.listen({ cert, key });
  const flood = await slowHellos(listener.addr.port, cert, 300);
  for (let round = 0; round < 100 && listener.stats().handshakes < 300; round++) await delay(20);
  assert.equal(listener.stats().handshakes, 300, "the flood holds 300 handshakes");
  const elapsed = await timedConnect(client, listener, cert);
  console.log(`connect during the flood: ${elapsed.toFixed(1)} ms`);
  assert.ok(elapsed < 1000, `took ${elapsed} ms`);
  await Promise.all(flood.map((raw) => raw[Symbol.asyncDispose]()));
});

Deno.test("transport hostile: with every handshake slot held by peers that send no hello, a newcomer takes the slot of one idling after TLS", async () => {
  await using server = await Kernel.open(libraryOptions);
  await using client = await Kernel.open(libraryOptions);
  const { cert, key } = server.transport.createDevCertificate();
  await using listener = await server.transport.listen({ cert, key, maxHandshakes: 32 });
  const flood = await slowHellos(listener.addr.port, cert, 32);
  assert.equal(listener.stats().handshakes, 32);
  await delay(300); // idle after TLS long enough to be evicted
  const elapsed = await timedConnect(client, listener, cert);
  console.log(`connect with every slot taken: ${elapsed.toFixed(1)} ms`);
  assert.ok(elapsed < 1000, `took ${elapsed} ms`);
  const stats = listener.stats();
  assert.equal(stats.handshakesEvicted, 1);
  assert.match(stats.lastRefusal, /newer handshake took the slot/);
  // The evicted peer was told why, with code 6; under pressure (more than
  // half the slots taken) the others get 2 s for their hello, not 10 s.
  const codes = await Promise.all(flood.map((raw) => raw.closed.then((info) => info.closeCode)));
  assert.equal(codes.filter((code) => code === 6).length, 1);
  assert.equal(codes.filter((code) => code === 2).length, 31);
  assert.match(listener.stats().lastRefusal, /no hello within 2000 ms/);
  await Promise.all(flood.map((raw) => raw[Symbol.asyncDispose]()));
});

Deno.test("transport hostile: close() to a peer that stops reading ends within its timeout, sends waiting in JS included", async () => {
  await using server = await Kernel.open(libraryOptions);
  await using client = await Kernel.open(libraryOptions);
  const { cert, key } = server.transport.createDevCertificate();
  await using listener = await server.transport.listen({ cert, key, maxPacketBytes: 16 * 1024 });
  const link = await client.transport.connect({
    hostname: "127.0.0.1",
    port: listener.addr.port,
    serverName: "localhost",
    caCerts: [cert],
    maxPacketBytes: 16 * 1024,
  });
  const peer = (await listener.accept())!; // its application never reads
  // Far more than the peer's ring, QUIC window and our send ring hold: most
  // sends wait in JS when close() starts.
  const sends = Promise.allSettled(
    Array.from({ length: 400 }, () => link.send(new Uint8Array(16 * 1024))),
  );
  await delay(200);
  const started = performance.now();
  const info = await link.close({ timeoutMs: 1500 });
  const elapsed = performance.now() - started;
  console.log(`close to a peer that stops reading: ${elapsed.toFixed(0)} ms (timeoutMs 1500)`);
  assert.ok(elapsed >= 1400 && elapsed < 2500, `took ${elapsed} ms`);
  assert.ok(info.error instanceof ConnectionError, String(info.error));
  assert.equal(
    info.error.details.timeoutMs !== undefined || /took no data/.test(info.error.message),
    true,
  );
  const outcomes = await sends;
  assert.ok(outcomes.some((outcome) => outcome.status === "rejected"), "unsent sends are rejected");
  await peer.close({ timeoutMs: 1000 });
});

Deno.test("transport hostile: a valid packet in the same read as a later malformed header reaches JS before the link closes", async () => {
  await using server = await Kernel.open(libraryOptions);
  const { cert, key } = server.transport.createDevCertificate();
  await using listener = await server.transport.listen({ cert, key });
  const [raw] = await rawLinked(listener.addr.port, cert);
  const accepted = (await listener.accept())!;
  const stream = await raw.openUni();
  const garbage = packet(KnulKind.data, new Uint8Array(3));
  garbage.set(new TextEncoder().encode("HTTP"), 0);
  const first = new TextEncoder().encode("first");
  const second = new TextEncoder().encode("second");
  // One write: one QUIC frame, one read on the receiving side.
  await stream.write(
    new Uint8Array([
      ...packet(KnulKind.data, first),
      ...packet(KnulKind.data, second),
      ...garbage,
    ]),
  );
  const received: string[] = [];
  await assert.rejects(
    (async () => {
      for await (const got of accepted) received.push(new TextDecoder().decode(got.data));
    })(),
    (error: unknown) =>
      error instanceof ProtocolError && error.details.closeCode === "2" &&
      error.details.field === "magic",
  );
  assert.deepEqual(received, ["first", "second"]);
  assert.equal((await raw.closed).closeCode, 2);
  await accepted.close();
  await raw[Symbol.asyncDispose]();
});
