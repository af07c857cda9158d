// KNUL transport: real kernels, real QUIC over loopback, real TLS. Hostile
// peers are raw QUIC clients (Deno's own QUIC, tests/_quic_peer.ts) that
// complete TLS with ALPN knul/1 and then send whatever the test wants.
import assert from "node:assert/strict";
import {
  ClosedError,
  ConnectionError,
  createContext,
  InvalidArgumentError,
  Kernel,
  type Link,
  type Listener,
  ProtocolError,
  type ReadonlyBytes,
} from "../mod.ts";
import { encodeKnulHeader, KnulKind, tenantHash } from "../bindings/transport/_knul.ts";
import { connectRawPeer, listenRawPeer, type RawBiStream, type RawPeer } from "./_quic_peer.ts";
import { fixture, libraryPath } from "./_helpers.ts";

const libraryOptions = { dataDir: null, libraryPath: libraryPath() };

interface Pair extends AsyncDisposable {
  server: Kernel;
  client: Kernel;
  cert: string;
  key: string;
  listener: Listener;
  connect(options?: { maxPacketBytes?: number; serverName?: string }): Promise<[Link, Link]>;
}

/** Two kernels, a listener on one, and a way to make linked pairs. */
async function pair(listen: { maxPacketBytes?: number; tenants?: string[] } = {}): Promise<Pair> {
  const server = await Kernel.open(libraryOptions);
  const client = await Kernel.open(libraryOptions);
  const { cert, key } = server.transport.createDevCertificate();
  const listener = await server.transport.listen({ cert, key, ...listen });
  return {
    server,
    client,
    cert,
    key,
    listener,
    async connect(options = {}) {
      const connecting = client.transport.connect({
        hostname: "127.0.0.1",
        port: listener.addr.port,
        serverName: options.serverName ?? "localhost",
        caCerts: [cert],
        maxPacketBytes: options.maxPacketBytes ?? listen.maxPacketBytes,
      });
      const accepted = listener.accept();
      const link = await connecting;
      const peer = await accepted;
      assert.ok(peer !== null);
      return [link, peer];
    },
    async [Symbol.asyncDispose]() {
      listener.close();
      await client.close();
      await server.close();
    },
  };
}

const encoder = new TextEncoder();

function numbered(sequence: number, size = 16): Uint8Array {
  const bytes = new Uint8Array(size);
  new DataView(bytes.buffer).setUint32(0, sequence, true);
  for (let index = 4; index < size; index++) bytes[index] = (sequence + index) & 0xff;
  return bytes;
}

function sequenceOf(bytes: Uint8Array | ReadonlyBytes): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(0, true);
}

Deno.test("transport: two kernels exchange packets both ways, in order, with their context", async () => {
  await using kernels = await pair();
  const [link, peer] = await kernels.connect();
  assert.equal(link.remoteAddr.port, kernels.listener.addr.port);
  const count = 20_000;
  const ctx = createContext({
    tenantId: "tenant-a",
    traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
    priority: 200,
  });
  const echo = (async () => {
    let expected = 0;
    for await (const packet of peer) {
      assert.equal(sequenceOf(packet.data), expected++, "reliable packets arrive in order");
      assert.equal(packet.reliable, true);
      if (expected === 1) {
        assert.equal(packet.tenantHash, tenantHash("tenant-a"));
        assert.equal(packet.traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert.equal(packet.priority, 200);
      }
      await peer.send(packet.data);
      if (expected === count) return expected;
    }
    return expected;
  })();
  const sending = (async () => {
    for (let sequence = 0; sequence < count; sequence++) {
      await link.send(numbered(sequence), sequence === 0 ? { ctx } : undefined);
    }
  })();
  let received = 0;
  for await (const packet of link) {
    assert.equal(sequenceOf(packet.data), received++);
    assert.deepEqual(packet.data, numbered(received - 1), "payload bytes intact");
    assert.equal(packet.traceId, null);
    if (received === count) break;
  }
  await sending;
  assert.equal(await echo, count);
  const stats = link.stats();
  assert.equal(stats.packetsSent, count);
  assert.equal(stats.packetsReceived, count);
  assert.ok(stats.rttMs >= 0);
  await link.close();
  await peer.close();
});

Deno.test("transport: a packet of exactly maxPacketBytes arrives; one byte more is refused and the link stays usable", async () => {
  await using kernels = await pair({ maxPacketBytes: 4096 });
  const [link, peer] = await kernels.connect({ maxPacketBytes: 4096 });
  assert.equal(link.maxSendBytes, 4096);
  const full = new Uint8Array(4096).map((_, index) => index & 0xff);
  await link.send(full);
  await assert.rejects(
    link.send(new Uint8Array(4097)),
    (error: unknown) =>
      error instanceof InvalidArgumentError && error.details.limit === "4096" &&
      /4097 bytes exceeds/.test(error.message),
  );
  await link.send(encoder.encode("after"));
  const first = await peer.receive();
  assert.deepEqual(first?.data, full);
  const second = await peer.receive();
  assert.equal(new TextDecoder().decode(second!.data), "after");
  assert.throws(() => first!.data, ClosedError, "a packet's view ends at the next packet");
  await link.close();
  await peer.close();
});

Deno.test("transport: unreliable packets travel as datagrams; too large for the path is refused", async () => {
  await using kernels = await pair();
  const [link, peer] = await kernels.connect();
  assert.ok(link.maxDatagramBytes > 1000, `datagram limit ${link.maxDatagramBytes}`);
  await assert.rejects(
    link.send(new Uint8Array(link.maxDatagramBytes + 1), { reliable: false }),
    InvalidArgumentError,
  );
  // Datagrams may be lost (loopback rarely loses one of a few) and are not
  // ordered with the stream: the reliable end marker follows a pause.
  for (let index = 0; index < 10; index++) {
    await link.send(numbered(index), { reliable: false });
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
  await link.send(encoder.encode("end"));
  let datagrams = 0;
  for await (const packet of peer) {
    if (packet.reliable) break;
    datagrams++;
  }
  assert.ok(datagrams >= 1, "at least one datagram arrived");
  await link.close();
  await peer.close();
});

Deno.test("transport: back-pressure: a reader that stops slows the sender, memory stays bounded, nothing is lost", async () => {
  await using kernels = await pair({ maxPacketBytes: 16 * 1024 });
  const [link, peer] = await kernels.connect({ maxPacketBytes: 16 * 1024 });
  const count = 4000; // 64 MB: far more than rings + QUIC windows hold
  let pending = 0;
  let finished = 0;
  const sends: Promise<void>[] = [];
  for (let sequence = 0; sequence < count; sequence++) {
    const sent = link.send(numbered(sequence, 16 * 1024));
    sends.push(sent.then(() => void finished++));
  }
  // Let the kernel move what it can: the reader has not read anything yet.
  await new Promise((resolve) => setTimeout(resolve, 300));
  pending = count - finished;
  assert.ok(pending > count / 2, `sends wait for the reader (${pending} of ${count} pending)`);
  const stats = kernels.client.stats().buffers;
  assert.ok(stats.ringUsedBytes <= stats.ringCapacityBytes);
  let expected = 0;
  for await (const packet of peer) {
    assert.equal(sequenceOf(packet.data), expected++);
    if (expected === count) break;
  }
  await Promise.all(sends);
  assert.equal(expected, count, "every reliable packet arrived");
  await link.close();
  await peer.close();
});

Deno.test("transport: large packets (sent from the ring without a copy) arrive intact and in order among small ones", async () => {
  await using kernels = await pair();
  const [link, peer] = await kernels.connect();
  const count = 300;
  const sizeOf = (sequence: number) => sequence % 3 === 0 ? 200 * 1024 + sequence : 100;
  const sending = (async () => {
    for (let sequence = 0; sequence < count; sequence++) {
      await link.send(numbered(sequence, sizeOf(sequence)));
    }
  })();
  let expected = 0;
  for await (const packet of peer) {
    assert.equal(packet.length, sizeOf(expected));
    assert.deepEqual(packet.data, numbered(expected, sizeOf(expected)));
    if (++expected === count) break;
  }
  await sending;
  assert.equal((await link.close()).error, null);
  await peer.close();
});

Deno.test("transport: unreliable packets to a reader that does not read are dropped and counted, never queued without bound", async () => {
  await using kernels = await pair({ maxPacketBytes: 1024 });
  const [link, peer] = await kernels.connect({ maxPacketBytes: 1024 });
  const payload = new Uint8Array(Math.min(1000, link.maxDatagramBytes));
  for (let index = 0; index < 20_000; index++) {
    await link.send(payload, { reliable: false });
  }
  await link.send(encoder.encode("end")); // reliable: arrives once the ring has room
  await new Promise((resolve) => setTimeout(resolve, 200));
  const stats = kernels.server.stats().buffers;
  assert.ok(stats.ringUsedBytes <= stats.ringCapacityBytes);
  let datagrams = 0;
  for await (const packet of peer) {
    if (packet.reliable) break;
    datagrams++;
  }
  const dropped = peer.stats().datagramsDropped;
  assert.ok(dropped > 0, "a full receive ring drops datagrams");
  assert.ok(datagrams + dropped <= 20_000);
  await link.close();
  await peer.close();
});

Deno.test("transport: closed links and listeners are freed; dropped ones are freed by the garbage collector", async () => {
  await using kernels = await pair();
  const [link, peer] = await kernels.connect();
  const counts = (kernel: Kernel) => {
    const { links, listeners, windowBytes } = kernel.stats().transport;
    return { links, listeners, windowBytes };
  };
  // Each link holds its windows' share of the kernel's budget: receive ring
  // (8 MiB at 1 MiB maxPacketBytes), 2.5× (QUIC windows, 8 MiB + 64 KiB, and
  // datagrams, 256 KiB).
  const charge = (8 << 20) + ((8 << 20) + (64 << 10) + (256 << 10)) * 5 / 2;
  assert.deepEqual(counts(kernels.server), { links: 1, listeners: 1, windowBytes: charge });
  assert.deepEqual(counts(kernels.client), { links: 1, listeners: 0, windowBytes: charge });
  await link.close();
  await peer.close();
  assert.deepEqual(counts(kernels.client), { links: 0, listeners: 0, windowBytes: 0 });
  assert.equal(kernels.server.stats().transport.links, 0);
  assert.equal(kernels.server.stats().transport.windowBytes, 0, "given back when freed");
  // Links the application forgets are closed by the GC safety net.
  let forgotten: unknown[] | null = [];
  for (let index = 0; index < 3; index++) forgotten.push(await kernels.connect());
  assert.equal(kernels.client.stats().transport.links, 3);
  assert.equal(forgotten.length, 3);
  forgotten = null;
  for (let round = 0; round < 20 && kernels.client.stats().transport.links > 0; round++) {
    (globalThis as { gc?: () => void }).gc?.();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(kernels.client.stats().transport.links, 0, "forgotten links were freed");
  kernels.listener.close();
  assert.equal(kernels.server.stats().transport.listeners, 0);
});

Deno.test("transport: a graceful close delivers every packet sent before it, then ends the peer's iteration", async () => {
  await using kernels = await pair();
  const [link, peer] = await kernels.connect();
  const count = 5000;
  for (let sequence = 0; sequence < count; sequence++) void link.send(numbered(sequence, 256));
  const closing = link.close({ code: 0, reason: "done for today" });
  let received = 0;
  for await (const packet of peer) assert.equal(sequenceOf(packet.data), received++);
  assert.equal(received, count);
  const info = await closing;
  assert.deepEqual({ ...info }, { code: 0, reason: "done for today", byPeer: false, error: null });
  const ended = await peer.ended;
  assert.equal(ended.byPeer, true);
  assert.equal(ended.reason, "done for today");
  await assert.rejects(peer.send(encoder.encode("late")), ClosedError);
  await assert.rejects(link.send(encoder.encode("late")), ClosedError);
  assert.throws(() => link.stats(), ClosedError);
  await peer.close();
});

Deno.test("transport: close() with sends still waiting for ring space delivers them all", async () => {
  await using kernels = await pair({ maxPacketBytes: 16 * 1024 });
  const [link, peer] = await kernels.connect({ maxPacketBytes: 16 * 1024 });
  const count = 100; // more than the send ring holds: most sends wait in JS
  const sends = Array.from(
    { length: count },
    (_, sequence) => link.send(numbered(sequence, 16 * 1024)),
  );
  const closing = link.close();
  await assert.rejects(
    link.send(new Uint8Array(1)),
    ClosedError,
    "new sends are refused once closing",
  );
  let received = 0;
  for await (const packet of peer) assert.equal(sequenceOf(packet.data), received++);
  await Promise.all(sends);
  assert.equal(received, count);
  assert.equal((await closing).error, null);
  await peer.close();
});

Deno.test("transport: a reader that pauses still gets every packet of a peer's graceful close", async () => {
  await using kernels = await pair({ maxPacketBytes: 16 * 1024 });
  const [link, peer] = await kernels.connect({ maxPacketBytes: 16 * 1024 });
  // 3.2 MB: more than the receiver's ring and QUIC window hold (about
  // 128 KiB + 320 KiB at 16 KiB packets), so most sends still wait in JS.
  const count = 200;
  const sends = Array.from(
    { length: count },
    (_, sequence) => link.send(numbered(sequence, 16 * 1024)),
  );
  const closing = link.close({ reason: "bye" });
  await new Promise((resolve) => setTimeout(resolve, 1500)); // the application is busy
  let received = 0;
  for await (const packet of peer) assert.equal(sequenceOf(packet.data), received++);
  assert.equal(received, count);
  await Promise.all(sends);
  assert.deepEqual({ ...(await closing) }, { code: 0, reason: "bye", byPeer: false, error: null });
  assert.equal((await peer.ended).error, null);
  await peer.close();
});

Deno.test("transport: when both sides close at once, a clean close means the peer read everything", async () => {
  await using kernels = await pair({ maxPacketBytes: 16 * 1024 });
  for (let round = 0; round < 4; round++) {
    const [a, b] = await kernels.connect({ maxPacketBytes: 16 * 1024 });
    const count = 200;
    const read = async (link: Link) => {
      let received = 0;
      try {
        for await (const packet of link) {
          received++; // delivered, even if close() ends its view below
          assert.equal(sequenceOf(packet.data), received - 1);
        }
      } catch (error) {
        // close() on this side ends the view of a packet not yet looked at.
        if (!(error instanceof ClosedError)) throw error;
      }
      return received;
    };
    const send = async (link: Link) => {
      for (let sequence = 0; sequence < count; sequence++) {
        await link.send(numbered(sequence, 16 * 1024));
      }
    };
    const [readA, readB] = [read(a), read(b)];
    await Promise.all([send(a), send(b)]);
    const [closedA, closedB] = await Promise.all([a.close(), b.close()]);
    const [gotA, gotB] = await Promise.all([readA, readB]);
    // Each side's close is clean only if the other side read all it sent;
    // otherwise it says how many packets the peer dropped.
    for (const [closed, peerGot] of [[closedA, gotB], [closedB, gotA]] as const) {
      if (closed.error === null) {
        assert.equal(peerGot, count, `round ${round}: clean close but the peer read ${peerGot}`);
      } else {
        assert.ok(closed.error instanceof ConnectionError, String(closed.error));
        assert.equal(
          peerGot + Number(closed.error.details.discarded),
          count,
          `round ${round}: ${closed.error.message}; the peer read ${peerGot}`,
        );
      }
    }
  }
});

Deno.test("transport: close() reports the peer aborting in the middle of it", async () => {
  await using kernel = await Kernel.open(libraryOptions);
  const { cert, key } = kernel.transport.createDevCertificate();
  await using raw = await listenRawPeer({ cert, key });
  const serverSide = (async () => {
    const conn = await raw.accept();
    const control = await conn.acceptBi();
    await control.read(); // the hello
    await control.write(packet(KnulKind.hello, new Uint8Array([0, 0, 16, 0, 1])));
    return conn;
  })();
  const link = await kernel.transport.connect({
    hostname: "127.0.0.1",
    port: raw.port,
    serverName: "localhost",
    caCerts: [cert],
    maxPacketBytes: 16 * 1024,
  });
  const conn = await serverSide;
  // Fill what QUIC and the ring take: the raw peer never reads.
  let sent = 0;
  for (let round = 0; round < 20; round++) {
    while (link.trySend(numbered(sent, 16 * 1024))) sent++;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const closing = link.close({ reason: "bye" });
  await new Promise((resolve) => setTimeout(resolve, 100));
  conn.close(2, "peer crashed");
  const info = await closing;
  assert.ok(info.error instanceof ConnectionError, `close reported ${JSON.stringify(info)}`);
  assert.equal(info.error.details.closeCode, "2");
});

/** Resolves with `promise`'s value, or rejects after `ms` (a hang is a failure). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

Deno.test("transport: a link whose peer started closing ends with an error when the connection then drops", async () => {
  await using kernels = await pair();
  const [link, peer] = await kernels.connect();
  const big = new Uint8Array(1 << 19);
  for (let index = 0; index < 24; index++) await link.send(big); // 12 MiB: more than the peer's ring
  const closing = link.close();
  closing.catch(() => {});
  await new Promise((resolve) => setTimeout(resolve, 500));
  await kernels.client.close(); // the closing side's kernel goes away mid-handshake
  const ended = await within(peer.ended, 5_000, "peer.ended");
  assert.ok(ended.error instanceof ConnectionError, String(ended.error));
  let received = 0;
  await assert.rejects(
    within(
      (async () => {
        for await (const _ of peer) received++;
      })(),
      5_000,
      "the iteration",
    ),
    ConnectionError,
  );
  assert.ok(received < 24, "packets were lost, and the iteration says so");
});

Deno.test("transport: a peer confirming a close that was never sent is a protocol error", async () => {
  await using kernels = await pair();
  const raw = await rawLinked(kernels.listener.addr.port, kernels.cert);
  const accepted = (await kernels.listener.accept())!;
  const control = controlStreams.get(raw)!;
  const confirm = new Uint8Array(8); // code 0, discarded 0
  const header = encodeKnulHeader({
    version: 1,
    kind: KnulKind.close,
    flags: 0b11,
    priority: 128,
    payloadLength: confirm.length,
    tenant: 0n,
    traceId: new Uint8Array(16),
  });
  await control.write(new Uint8Array([...header, ...confirm]));
  const ended = await within(accepted.ended, 5_000, "ended");
  assert.ok(ended.error instanceof ProtocolError, String(ended.error));
  assert.match(ended.error.message, /never sent/);
  await accepted.close();
  await raw[Symbol.asyncDispose]();
});

Deno.test("transport: a bad close code is refused at once and the link can still be closed", async () => {
  await using kernels = await pair();
  const [link, peer] = await kernels.connect();
  await assert.rejects(link.close({ code: 70000 }), InvalidArgumentError);
  await link.send(encoder.encode("still open"));
  assert.equal(new TextDecoder().decode((await peer.receive())!.data), "still open");
  assert.equal((await link.close()).error, null);
  await peer.close();
});

Deno.test("transport: closing a listener refuses new links and leaves accepted links open", async () => {
  await using kernels = await pair();
  const [link, peer] = await kernels.connect();
  kernels.listener.close();
  assert.equal(await kernels.listener.accept(), null);
  await assert.rejects(
    kernels.client.transport.connect({
      hostname: "127.0.0.1",
      port: kernels.listener.addr.port,
      serverName: "localhost",
      caCerts: [kernels.cert],
    }),
    ConnectionError,
  );
  await link.send(encoder.encode("after"));
  assert.equal(new TextDecoder().decode((await peer.receive())!.data), "after");
  await peer.send(encoder.encode("back"));
  assert.equal(new TextDecoder().decode((await link.receive())!.data), "back");
  assert.equal((await link.close()).error, null);
  await peer.close();
});

Deno.test("transport: a wrong server name or an untrusted certificate is refused; the listener keeps working", async () => {
  await using kernels = await pair();
  await assert.rejects(
    kernels.client.transport.connect({
      hostname: "127.0.0.1",
      port: kernels.listener.addr.port,
      serverName: "not-this-server.example",
      caCerts: [kernels.cert],
    }),
    (error: unknown) =>
      error instanceof ConnectionError && /not valid for name/.test(error.message),
  );
  const stranger = kernels.client.transport.createDevCertificate();
  await assert.rejects(
    kernels.client.transport.connect({
      hostname: "127.0.0.1",
      port: kernels.listener.addr.port,
      serverName: "localhost",
      caCerts: [stranger.cert],
    }),
    (error: unknown) =>
      error instanceof ConnectionError && /UnknownIssuer|certificate/.test(error.message),
  );
  const [link, peer] = await kernels.connect();
  await link.send(encoder.encode("still here"));
  assert.equal(new TextDecoder().decode((await peer.receive())!.data), "still here");
  assert.ok(kernels.listener.stats().refused >= 2, JSON.stringify(kernels.listener.stats()));
  await link.close();
  await peer.close();
});

Deno.test("transport: bad options are typed errors naming the field", async () => {
  await using kernel = await Kernel.open(libraryOptions);
  const { cert, key } = kernel.transport.createDevCertificate();
  const field = (name: string) => (error: unknown) =>
    error instanceof InvalidArgumentError && error.details.field === name;
  await assert.rejects(kernel.transport.listen({ cert: "nope", key }), field("cert"));
  await assert.rejects(kernel.transport.listen({ cert, key: "nope" }), field("key"));
  await assert.rejects(kernel.transport.listen({ cert, key, port: 70000 }), field("port"));
  await assert.rejects(
    kernel.transport.listen({ cert, key, maxPacketBytes: 2 ** 30 }),
    field("maxPacketBytes"),
  );
  // @ts-expect-error: wrong type on purpose
  await assert.rejects(kernel.transport.listen({ cert: 42, key }), field("cert"));
  await assert.rejects(
    kernel.transport.connect({ hostname: "127.0.0.1", port: 1, caCerts: [] }),
    field("caCerts"),
  );
  await assert.rejects(
    kernel.transport.connect({ hostname: "127.0.0.1", port: 1, caCerts: ["not pem"] }),
    field("caCerts"),
  );
  assert.throws(() => kernel.transport.createDevCertificate({ names: [""] }), field("names"));
  await using listener = await kernel.transport.listen({ cert, key });
  const [link, peer] = await Promise.all([
    kernel.transport.connect({
      hostname: "127.0.0.1",
      port: listener.addr.port,
      serverName: "localhost",
      caCerts: [cert],
    }),
    listener.accept(),
  ]);
  // @ts-expect-error: wrong type on purpose
  await assert.rejects(link.send("text"), field("bytes"));
  await assert.rejects(
    link.send(new Uint8Array(1), { ctx: createContext({ traceId: "not-hex" }) }),
    field("ctx.traceId"),
  );
  await assert.rejects(link.send(new Uint8Array(1), { priority: 256 }), field("priority"));
  await link.close();
  await peer!.close();
});

/** The control stream of each raw peer `rawLinked` made. */
const controlStreams = new WeakMap<RawPeer, RawBiStream>();

/** Completes TLS and the KNUL hello as a raw peer; returns it ready to misbehave. */
async function rawLinked(port: number, cert: string, version = 1): Promise<RawPeer> {
  const raw = await connectRawPeer({
    hostname: "127.0.0.1",
    port,
    caCert: cert,
    serverName: "localhost",
  });
  const control = await raw.openBi();
  const hello = new Uint8Array(5);
  new DataView(hello.buffer).setUint32(0, 1 << 20, true);
  hello[4] = version;
  await control.write(packet(KnulKind.hello, hello, { version }));
  // Nothing may be sent before the server's hello (docs/knul.md): wait for it.
  await readBytes(control, 45);
  controlStreams.set(raw, control);
  return raw;
}

/** Reads exactly `count` bytes from a raw stream (chunks may split them anyhow). */
async function readBytes(stream: { read(): Promise<Uint8Array | null> }, count: number) {
  const bytes = new Uint8Array(count);
  let have = 0;
  while (have < count) {
    const chunk = await stream.read();
    if (chunk === null) throw new Error(`the stream ended after ${have} of ${count} bytes`);
    const take = Math.min(chunk.length, count - have);
    bytes.set(chunk.subarray(0, take), have);
    have += take;
    if (take < chunk.length) throw new Error("more bytes than asked for");
  }
  return bytes;
}

function packet(
  kind: number,
  payload: Uint8Array,
  options: { version?: number; payloadLength?: number; reliable?: boolean } = {},
): Uint8Array {
  const header = encodeKnulHeader({
    version: options.version ?? 1,
    kind,
    flags: options.reliable === false ? 0 : 1,
    priority: 128,
    payloadLength: options.payloadLength ?? payload.length,
    tenant: 0n,
    traceId: new Uint8Array(16),
  });
  const bytes = new Uint8Array(header.length + payload.length);
  bytes.set(header);
  bytes.set(payload, header.length);
  return bytes;
}

interface HostileCase {
  name: string;
  /** What the raw peer does after the hello. */
  act(raw: RawPeer): Promise<void>;
  /** The error the accepted link's iterator must throw. */
  error: (error: unknown) => boolean;
}

const hostile: HostileCase[] = [
  {
    name: "garbage bytes",
    async act(raw) {
      const stream = await raw.openUni();
      await stream.write(encoder.encode("GET / HTTP/1.1\r\nHost: nope\r\n\r\n-----garbage-----"));
    },
    error: (error) =>
      error instanceof ProtocolError && error.details.closeCode === "2" &&
      error.details.field === "magic",
  },
  {
    name: "a truncated header",
    async act(raw) {
      const stream = await raw.openUni();
      await stream.write(packet(KnulKind.data, new Uint8Array(0)).subarray(0, 17));
      await stream.close();
    },
    error: (error) => error instanceof ProtocolError && /17 of 40 header bytes/.test(error.message),
  },
  {
    name: "a wrong version",
    async act(raw) {
      const stream = await raw.openUni();
      await stream.write(packet(KnulKind.data, new Uint8Array(8), { version: 9 }));
    },
    error: (error) =>
      error instanceof ProtocolError && error.details.closeCode === "3" &&
      /version 9/.test(error.message),
  },
  {
    name: "a packet over maxPacketBytes",
    async act(raw) {
      const stream = await raw.openUni();
      await stream.write(packet(KnulKind.data, new Uint8Array(8), { payloadLength: 4097 }));
    },
    error: (error) =>
      error instanceof ProtocolError && error.details.closeCode === "4" &&
      error.details.field === "too_large",
  },
  {
    name: "a connection dropped mid-packet",
    async act(raw) {
      const stream = await raw.openUni();
      await stream.write(packet(KnulKind.data, new Uint8Array(100), { payloadLength: 1000 }));
      await new Promise((resolve) => setTimeout(resolve, 50));
      raw.close(0, "");
    },
    error: (error) =>
      error instanceof ConnectionError && error.details.midPacket === "true" &&
      /100 of 1000 bytes/.test(error.message),
  },
  {
    name: "a datagram whose header lies about its length",
    async act(raw) {
      await raw.sendDatagram(
        packet(KnulKind.data, new Uint8Array(10), { payloadLength: 20, reliable: false }),
      );
    },
    error: (error) =>
      error instanceof ProtocolError && /announces 20 payload bytes/.test(error.message),
  },
];

for (const hostileCase of hostile) {
  Deno.test(`transport: a peer that sends ${hostileCase.name} loses its link with a typed error; the listener and other links keep working`, async () => {
    await using kernels = await pair({ maxPacketBytes: 4096 });
    const [good, goodPeer] = await kernels.connect({ maxPacketBytes: 4096 });
    const raw = await rawLinked(kernels.listener.addr.port, kernels.cert);
    const accepted = await kernels.listener.accept();
    assert.ok(accepted !== null);
    await hostileCase.act(raw);
    await assert.rejects(
      (async () => {
        for await (const _ of accepted) { /* nothing valid arrives */ }
      })(),
      hostileCase.error,
    );
    const ended = await accepted.ended;
    assert.ok(ended.error !== null);
    // The raw peer sees the close code (unless it dropped the connection itself).
    if (hostileCase.name !== "a connection dropped mid-packet") {
      const closed = await raw.closed;
      assert.equal(String(closed.closeCode), ended.error.details.closeCode);
    }
    await accepted.close();
    // The good link and the listener are unaffected.
    await good.send(encoder.encode("ok"));
    assert.equal(new TextDecoder().decode((await goodPeer.receive())!.data), "ok");
    const [another, anotherPeer] = await kernels.connect({ maxPacketBytes: 4096 });
    await another.send(encoder.encode("new"));
    assert.equal(new TextDecoder().decode((await anotherPeer.receive())!.data), "new");
    await Promise.all([good.close(), goodPeer.close(), another.close(), anotherPeer.close()]);
    await raw[Symbol.asyncDispose]();
  });
}

Deno.test("transport: a peer offering another protocol version is refused at the hello with code 3 and a reason", async () => {
  await using kernels = await pair();
  const raw = await connectRawPeer({
    hostname: "127.0.0.1",
    port: kernels.listener.addr.port,
    caCert: kernels.cert,
    serverName: "localhost",
  });
  const control = await raw.openBi();
  const hello = new Uint8Array([0, 0, 16, 0, 2]); // max 1 MiB, speaks version 2 only
  await control.write(packet(KnulKind.hello, hello));
  const closed = await raw.closed;
  assert.equal(closed.closeCode, 3);
  assert.match(closed.reason, /knul: this peer speaks version 1 only/);
  await raw[Symbol.asyncDispose]();
  const stats = kernels.listener.stats();
  assert.equal(stats.refused, 1);
  assert.match(stats.lastRefusal, /version 1 only/);
  const [link, peer] = await kernels.connect();
  await link.close();
  await peer.close();
});

Deno.test("transport: a listener serving named tenants refuses other tenants' packets before JS sees them", async () => {
  await using kernels = await pair({ tenants: ["tenant-a"] });
  const [link, peer] = await kernels.connect();
  await link.send(encoder.encode("allowed"), { ctx: createContext({ tenantId: "tenant-a" }) });
  assert.equal(new TextDecoder().decode((await peer.receive())!.data), "allowed");
  await link.send(encoder.encode("refused"), { ctx: createContext({ tenantId: "tenant-b" }) });
  await assert.rejects(
    peer.receive(),
    (error: unknown) => error instanceof ProtocolError && error.details.closeCode === "5",
  );
  const ended = await link.ended;
  assert.ok(ended.error instanceof ConnectionError);
  assert.equal(ended.code, 5);
  await link.close();
  await peer.close();
});

Deno.test("transport: 1,000 concurrent links between two kernels", async () => {
  await using kernels = await pair({ maxPacketBytes: 1024 });
  const count = 1000;
  const connecting = Array.from({ length: count }, () =>
    kernels.client.transport.connect({
      hostname: "127.0.0.1",
      port: kernels.listener.addr.port,
      serverName: "localhost",
      caCerts: [kernels.cert],
      maxPacketBytes: 1024,
    }));
  const accepted: Link[] = [];
  for (let index = 0; index < count; index++) accepted.push((await kernels.listener.accept())!);
  const links = await Promise.all(connecting);
  // Every accepted link echoes one packet; every client link checks its own.
  const echoes = accepted.map(async (peer) => {
    const packet = await peer.receive();
    await peer.send(packet!.data);
  });
  await Promise.all(links.map((link, index) => link.send(numbered(index))));
  const replies = await Promise.all(
    links.map(async (link) => sequenceOf((await link.receive())!.data)),
  );
  await Promise.all(echoes);
  assert.deepEqual(replies, Array.from({ length: count }, (_, index) => index));
  assert.equal(kernels.listener.stats().accepted, count);
  await Promise.all([...links, ...accepted].map((link) => link.close()));
});

Deno.test("transport: two Deno processes exchange packets both ways", async () => {
  await using kernel = await Kernel.open(libraryOptions);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", fixture("knul_echo.ts")],
    env: { KREPIS_LIBRARY_PATH: libraryPath() },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) throw new Error("the echo process exited before listening");
    text += value;
  }
  const { port, cert } = JSON.parse(text.split("\n")[0]);
  const link = await kernel.transport.connect({
    hostname: "127.0.0.1",
    port,
    serverName: "localhost",
    caCerts: [cert],
  });
  const count = 10_000;
  const sending = (async () => {
    for (let sequence = 0; sequence < count; sequence++) await link.send(numbered(sequence, 64));
  })();
  let expected = 0;
  for await (const packet of link) {
    assert.equal(sequenceOf(packet.data), expected++);
    if (expected === count) break;
  }
  await sending;
  await link.close({ reason: "test done" });
  const status = await child.status;
  lines.releaseLock();
  await child.stdout.cancel().catch(() => {});
  assert.equal(status.code, 0, "the echo process saw a clean close and exited 0");
});

Deno.test("transport: closing the kernel ends open links, listeners and waiting iterators without a crash", async () => {
  const kernels = await pair();
  const [link, peer] = await kernels.connect();
  const iterating = (async () => {
    let count = 0;
    for await (const _ of peer) count++;
    return count;
  })();
  const accepting = kernels.listener.accept();
  await kernels.server.close();
  assert.equal(await iterating, 0);
  assert.equal(await accepting, null);
  await assert.rejects(peer.send(new Uint8Array(1)), ClosedError);
  // The peer is told ("going away"), not left to notice at its idle timeout.
  const ended = await Promise.race([
    link.ended,
    new Promise<never>((_, reject) => {
      const timer = setTimeout(() => reject(new Error("the peer was not told")), 5_000);
      link.ended.finally(() => clearTimeout(timer));
    }),
  ]);
  assert.equal(ended.byPeer, true);
  assert.equal(ended.code, 1, "going away");
  await link.close();
  await kernels.client.close();
});

Deno.test("transport: listening or connecting without net permission is a PermissionError", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--allow-ffi",
      "--allow-read",
      "--allow-env",
      fixture("knul_no_net.ts"),
    ],
    env: { KREPIS_LIBRARY_PATH: libraryPath() },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(output.stdout).trim().split("\n");
  const outcomes = stdout.map((line) => JSON.parse(line));
  assert.deepEqual(outcomes.map((outcome) => outcome.name), ["PermissionError", "PermissionError"]);
  assert.match(outcomes[0].message, /--allow-net=127\.0\.0\.1/);
  assert.match(outcomes[1].message, /--allow-net=127\.0\.0\.1:9/);
});
