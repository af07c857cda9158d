/**
 * Transport baselines for the QUIC transport benchmark: what plain Deno can do
 * on loopback with no Krepis code in the path.
 *
 * - {@linkcode tcpFramedPackets}: length-prefixed frames over TCP, one
 *   `write` per frame, parsed in JS on the receiving side.
 * - {@linkcode quicRoundTrips}: request/echo round trips on one QUIC stream.
 * - {@linkcode quicBulk}: one-way bulk transfer on one QUIC stream.
 * - {@linkcode udpRoundTrips}: request/echo round trips of plain UDP
 *   datagrams between two sockets, no encryption, no protocol: a yardstick
 *   for what any JS-driven round trip can reach on this machine.
 *
 * Deno's QUIC API is unstable: run with `--unstable-net` (and `--allow-net`).
 * Every function closes everything it opened before it returns, so it can be
 * called from a `Deno.test` with the resource and op sanitizers on.
 *
 * @module
 */

const LOOPBACK = "127.0.0.1";
const ALPN = "bench";
const FRAME_HEADER_BYTES = 4;
const READ_BUFFER_BYTES = 64 * 1024;

/**
 * Frames per second (and payload MB/s) for `packets` frames of `size` payload
 * bytes over loopback TCP. Each frame is a 4-byte little-endian length then
 * the payload, sent with one `conn.write` per frame (partial writes are
 * completed); the server reads into a reused 64 KiB buffer and parses frames
 * in JS. Timed from the first write until the server has parsed the last
 * frame.
 */
export async function tcpFramedPackets(
  options: { packets: number; size: number },
): Promise<{ packetsPerSecond: number; megabytesPerSecond: number }> {
  const { packets, size } = options;
  assertCount("packets", packets, 1);
  assertCount("size", size, 0);

  const listener = Deno.listen({ hostname: LOOPBACK, port: 0, transport: "tcp" });
  let client: Deno.TcpConn | undefined;
  let server: Deno.TcpConn | undefined;
  try {
    const accepted = listener.accept();
    client = await Deno.connect({ hostname: LOOPBACK, port: listener.addr.port });
    server = await accepted;
    const serverConn = server;
    const clientConn = client;

    const received = (async (): Promise<number> => {
      const buffer = new Uint8Array(READ_BUFFER_BYTES);
      let frames = 0;
      let headerFilled = 0; // header bytes of the current frame seen so far
      let length = 0; // little-endian length being assembled
      let payloadLeft = 0; // payload bytes of the current frame still to come
      while (frames < packets) {
        const n = await serverConn.read(buffer);
        if (n === null) throw new Error(`tcpFramedPackets: EOF after ${frames} frames`);
        let at = 0;
        while (at < n) {
          if (headerFilled < FRAME_HEADER_BYTES) {
            length |= buffer[at++] << (8 * headerFilled);
            if (++headerFilled < FRAME_HEADER_BYTES) continue;
            length >>>= 0;
            if (length !== size) {
              throw new Error(
                `tcpFramedPackets: frame ${frames} says ${length} bytes, sent ${size}`,
              );
            }
            payloadLeft = length;
          } else {
            const take = Math.min(payloadLeft, n - at);
            at += take;
            payloadLeft -= take;
          }
          if (payloadLeft === 0) {
            frames++;
            headerFilled = 0;
            length = 0;
          }
        }
      }
      return performance.now();
    })();

    // One frame buffer, rebuilt in place for every frame: length header, then
    // the frame's sequence number at the start of the payload (when it fits).
    const frame = new Uint8Array(FRAME_HEADER_BYTES + size).fill(0x5a);
    const view = new DataView(frame.buffer);
    const stampSequence = size >= 4;

    const start = performance.now();
    const sent = (async () => {
      for (let i = 0; i < packets; i++) {
        view.setUint32(0, size, true);
        if (stampSequence) view.setUint32(FRAME_HEADER_BYTES, i, true);
        // One write call per frame; loop only if the kernel took less.
        let written = await clientConn.write(frame);
        while (written < frame.length) written += await clientConn.write(frame.subarray(written));
      }
    })();
    const [end] = await Promise.all([received, sent]);

    const seconds = (end - start) / 1000;
    return {
      packetsPerSecond: packets / seconds,
      megabytesPerSecond: (packets * size) / 1e6 / seconds,
    };
  } finally {
    client?.close();
    server?.close();
    listener.close();
  }
}

/**
 * Round trips per second on one QUIC bidirectional stream over loopback: the
 * client writes `size` bytes, the server echoes them, the client reads `size`
 * bytes back, `roundTrips` times (after one untimed round trip that opens the
 * stream). `cert`/`key` are PEM; `cert` must be valid for `localhost` and is
 * also the client's CA.
 */
export async function quicRoundTrips(
  options: { cert: string; key: string; roundTrips: number; size: number },
): Promise<{ roundTripsPerSecond: number }> {
  const { roundTrips, size } = options;
  assertCount("roundTrips", roundTrips, 1);
  assertCount("size", size, 1);

  return await withQuicPair(options, async (client, server) => {
    const stream = await client.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    const reader = stream.readable.getReader({ mode: "byob" });
    const payload = new Uint8Array(size).fill(0x5a);
    let readBuffer = new Uint8Array(size);

    const roundTrip = async () => {
      await writer.write(payload);
      let got = 0;
      while (got < size) {
        const { value, done } = await reader.read(readBuffer.subarray(got));
        if (done || !value) throw new Error("quicRoundTrips: echo stream ended early");
        readBuffer = new Uint8Array(value.buffer);
        got += value.byteLength;
      }
    };

    const echoed = (async () => {
      const incoming = server.incomingBidirectionalStreams.getReader();
      const { value: echo } = await incoming.read();
      incoming.releaseLock();
      if (!echo) throw new Error("quicRoundTrips: no stream arrived");
      const echoReader = echo.readable.getReader();
      const echoWriter = echo.writable.getWriter();
      try {
        while (true) {
          const { value, done } = await echoReader.read();
          if (done) break;
          await echoWriter.write(value);
        }
        await echoWriter.close();
      } finally {
        echoReader.releaseLock();
        echoWriter.releaseLock();
      }
    })();
    echoed.catch(() => {}); // awaited below; handled here in case we throw first

    await roundTrip(); // opens the stream on the server side; not timed
    const start = performance.now();
    for (let i = 0; i < roundTrips; i++) await roundTrip();
    const seconds = (performance.now() - start) / 1000;

    await writer.close();
    await echoed;
    const { done } = await reader.read(new Uint8Array(1));
    if (!done) throw new Error("quicRoundTrips: unexpected bytes after the last echo");
    return { roundTripsPerSecond: roundTrips / seconds };
  });
}

/**
 * Round trips per second of plain UDP datagrams over loopback: one socket
 * sends `size` bytes, the other echoes them from JS, the first receives them,
 * `roundTrips` times (after one untimed round trip). No encryption and no
 * protocol: the floor under any transport whose packets go from JS to JS.
 */
export async function udpRoundTrips(
  options: { roundTrips: number; size: number },
): Promise<{ roundTripsPerSecond: number }> {
  const { roundTrips, size } = options;
  assertCount("roundTrips", roundTrips, 1);
  assertCount("size", size, 1);
  const client = Deno.listenDatagram({ transport: "udp", hostname: LOOPBACK, port: 0 });
  const server = Deno.listenDatagram({ transport: "udp", hostname: LOOPBACK, port: 0 });
  try {
    const serverAddr = server.addr as Deno.NetAddr;
    const echoed = (async () => {
      for (let i = 0; i <= roundTrips; i++) {
        const [data, from] = await server.receive();
        await server.send(data, from);
      }
    })();
    echoed.catch(() => {}); // awaited below; handled here in case we throw first
    const payload = new Uint8Array(size).fill(0x5a);
    const roundTrip = async () => {
      await client.send(payload, serverAddr);
      const [data] = await client.receive();
      if (data.length !== size) throw new Error("udpRoundTrips: wrong echo size");
    };
    await roundTrip(); // not timed
    const start = performance.now();
    for (let i = 0; i < roundTrips; i++) await roundTrip();
    const seconds = (performance.now() - start) / 1000;
    await echoed;
    return { roundTripsPerSecond: roundTrips / seconds };
  } finally {
    client.close();
    server.close();
  }
}

/**
 * Megabytes (1e6 bytes) per second for `bytes` bytes sent one way on one QUIC
 * stream over loopback, written in chunks of `chunkBytes`. Timed from the
 * first write until the server has read the last byte. `cert`/`key` are PEM;
 * `cert` must be valid for `localhost` and is also the client's CA.
 */
export async function quicBulk(
  options: { cert: string; key: string; bytes: number; chunkBytes: number },
): Promise<{ megabytesPerSecond: number }> {
  const { bytes, chunkBytes } = options;
  assertCount("bytes", bytes, 1);
  assertCount("chunkBytes", chunkBytes, 1);

  return await withQuicPair(options, async (client, server) => {
    const stream = await client.createUnidirectionalStream();
    const writer = stream.getWriter();
    const chunk = new Uint8Array(chunkBytes).fill(0xa5);

    const received = (async (): Promise<number> => {
      const incoming = server.incomingUnidirectionalStreams.getReader();
      const { value: bulk } = await incoming.read();
      incoming.releaseLock();
      if (!bulk) throw new Error("quicBulk: no stream arrived");
      const reader = bulk.getReader({ mode: "byob" });
      let buffer = new Uint8Array(Math.max(chunkBytes, READ_BUFFER_BYTES));
      let got = 0;
      let end = 0;
      while (true) {
        const { value, done } = await reader.read(buffer);
        if (done || !value) break;
        got += value.byteLength;
        if (got >= bytes && end === 0) end = performance.now();
        buffer = new Uint8Array(value.buffer);
      }
      reader.releaseLock();
      if (got !== bytes) throw new Error(`quicBulk: server got ${got} bytes, sent ${bytes}`);
      return end;
    })();
    received.catch(() => {}); // awaited below; handled here in case we throw first

    const start = performance.now();
    for (let sent = 0; sent < bytes; sent += chunkBytes) {
      // The chunk never changes, so the same buffer can be queued again
      // before the previous write has completed.
      await writer.ready;
      writer.write(sent + chunkBytes <= bytes ? chunk : chunk.subarray(0, bytes - sent))
        .catch(() => {}); // a failure surfaces in `close()` below
    }
    await writer.close();
    const end = await received;

    const seconds = (end - start) / 1000;
    return { megabytesPerSecond: bytes / 1e6 / seconds };
  });
}

/**
 * Runs `body` with a connected client/server QUIC pair on loopback, then
 * closes both connections and both endpoints and waits until both sides have
 * seen the close (which also releases every stream resource).
 */
async function withQuicPair<T>(
  options: { cert: string; key: string },
  body: (client: Deno.QuicConn, server: Deno.QuicConn) => Promise<T>,
): Promise<T> {
  const endpoint = new Deno.QuicEndpoint({ hostname: LOOPBACK, port: 0 });
  // The client gets its own endpoint (not the one `connectQuic` would make)
  // so that it can be closed even when connecting fails.
  const clientEndpoint = new Deno.QuicEndpoint({ hostname: LOOPBACK, port: 0 });
  let listener: Deno.QuicListener | undefined;
  let client: Deno.QuicConn | undefined;
  let server: Deno.QuicConn | undefined;
  try {
    listener = endpoint.listen({ cert: options.cert, key: options.key, alpnProtocols: [ALPN] });
    const accepted = listener.accept();
    // If connecting fails, the server's handshake fails too: don't let that
    // rejection go unhandled.
    accepted.catch(() => {});
    client = await Deno.connectQuic({
      hostname: LOOPBACK,
      port: endpoint.addr.port,
      serverName: "localhost",
      caCerts: [options.cert],
      alpnProtocols: [ALPN],
      endpoint: clientEndpoint,
    });
    server = await accepted;
    return await body(client, server);
  } finally {
    listener?.stop();
    if (client) {
      client.close({ closeCode: 0, reason: "done" });
      await client.closed.catch(() => {});
    }
    // Closing the endpoint also closes any connection still open on it.
    endpoint.close();
    await server?.closed.catch(() => {});
    clientEndpoint.close();
  }
}

function assertCount(name: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${name} must be an integer >= ${min}, got ${value}`);
  }
}
