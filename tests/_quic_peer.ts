/**
 * A thin raw QUIC client and server for hostile-peer tests of KNUL (ALPN
 * `knul/1`): they speak QUIC and TLS correctly and nothing else, so a test
 * can send arbitrary bytes on streams and datagrams, close with any code, and
 * see exactly how the other side closed.
 *
 * Built on Deno's unstable QUIC API: run with `--unstable-net` (and
 * `--allow-net`). Notes on that API, as observed on Deno 2.9:
 *
 * - A stream reaches the peer only when its first byte (or FIN) is sent, so
 *   `acceptBi`/`acceptUni` on the other side wait for the first `write`.
 * - `closed` resolves to the peer's code and reason when the peer closed the
 *   connection; when this side closed it, it resolves to `{ closeCode: 0,
 *   reason: "" }` whatever code was sent. It rejects (with an `Error` whose
 *   message says why) when the connection died otherwise: idle timeout,
 *   a transport-level error, a reset.
 * - Datagrams need no enabling; `maxDatagramSize` starts at 1162 bytes on
 *   loopback and grows (1414 on loopback) once path MTU discovery has run.
 *   Larger datagrams are refused with `Error: datagram too large`.
 * - A refused handshake (wrong CA, wrong server name, no common ALPN) rejects
 *   `connectRawPeer` with a plain `Error` whose message starts with
 *   `the cryptographic handshake failed:`; the listener's `accept()` rejects
 *   the same way (`aborted by peer: ...`).
 *
 * @module
 */

/** The KNUL ALPN protocol id, used unless `alpn` says otherwise. */
export const KNUL_ALPN = "knul/1";

/** How a QUIC connection ended, as Deno reports it. */
export interface RawCloseInfo {
  /** The application close code. */
  closeCode: number;
  /** The close reason (UTF-8, decoded lossily). */
  reason: string;
}

/** The sending half of a stream. */
export interface RawSendStream {
  /** The QUIC stream id. */
  readonly id: bigint;
  /** Sends `bytes` (resolves once QUIC has taken them, not once they are acknowledged). */
  write(bytes: Uint8Array): Promise<void>;
  /** Finishes the stream (sends FIN). */
  close(): Promise<void>;
}

/** The receiving half of a stream. */
export interface RawReceiveStream {
  /** The QUIC stream id. */
  readonly id: bigint;
  /** The next chunk as it arrived (any size), or `null` once the peer has finished the stream. */
  read(): Promise<Uint8Array | null>;
  /** Stops reading (the peer is told to stop sending). */
  close(): Promise<void>;
}

/** A bidirectional stream: `close()` finishes the sending half; the receiving half stays readable. */
export interface RawBiStream {
  /** The QUIC stream id. */
  readonly id: bigint;
  /** Sends `bytes` (resolves once QUIC has taken them, not once they are acknowledged). */
  write(bytes: Uint8Array): Promise<void>;
  /** The next chunk as it arrived (any size), or `null` once the peer has finished its half. */
  read(): Promise<Uint8Array | null>;
  /** Finishes the sending half (sends FIN). */
  close(): Promise<void>;
}

/** One raw QUIC connection, either end. */
export interface RawConnection extends AsyncDisposable {
  /** Opens a bidirectional stream (throws a `RangeError` if the peer's stream limit is reached). */
  openBi(): Promise<RawBiStream>;
  /** Opens a unidirectional stream (throws a `RangeError` if the peer's stream limit is reached). */
  openUni(): Promise<RawSendStream>;
  /** The next bidirectional stream the peer opened; throws once the connection is closed. */
  acceptBi(): Promise<RawBiStream>;
  /** The next unidirectional stream the peer opened; throws once the connection is closed. */
  acceptUni(): Promise<RawReceiveStream>;
  /** Sends one datagram of at most {@linkcode RawConnection.maxDatagramSize} bytes. */
  sendDatagram(bytes: Uint8Array): Promise<void>;
  /** The next datagram from the peer. */
  readDatagram(): Promise<Uint8Array>;
  /** The largest datagram the peer accepts now (0 if it does not accept datagrams). */
  readonly maxDatagramSize: number;
  /** The ALPN protocol negotiated. */
  readonly protocol: string | undefined;
  /** Settles when the connection is closed: see the module notes for what Deno reports. */
  readonly closed: Promise<RawCloseInfo>;
  /** Closes the connection with an application close code and reason. */
  close(code: number, reason: string): void;
}

/** The client end: a {@linkcode RawConnection} that also owns its UDP endpoint. */
export type RawPeer = RawConnection;

/** A connection accepted by a {@linkcode RawListener}. */
export type RawPeerConn = RawConnection;

/** A raw QUIC server on 127.0.0.1 (by default). */
export interface RawListener extends AsyncDisposable {
  /** The UDP port it listens on. */
  readonly port: number;
  /** The next connection, once its handshake is complete (rejects if the handshake fails). */
  accept(): Promise<RawPeerConn>;
  /** Stops listening and closes every connection it accepted (code 0). */
  close(): void;
}

/**
 * Connects to a QUIC server as a raw peer, verifying the server's certificate
 * against `caCert` (PEM) and `serverName` (default: `hostname`), offering
 * `alpn` (default `knul/1`).
 */
export async function connectRawPeer(options: {
  hostname: string;
  port: number;
  caCert: string;
  serverName?: string;
  alpn?: string;
}): Promise<RawPeer> {
  // An endpoint of our own (rather than the one `connectQuic` would make) so
  // that it can be closed even when the handshake fails.
  const endpoint = new Deno.QuicEndpoint({
    hostname: isIPv4(options.hostname) ? "0.0.0.0" : "::",
    port: 0,
  });
  try {
    const conn = await Deno.connectQuic({
      hostname: options.hostname,
      port: options.port,
      serverName: options.serverName,
      caCerts: [options.caCert],
      alpnProtocols: [options.alpn ?? KNUL_ALPN],
      endpoint,
    });
    return wrapConnection(conn, () => endpoint.close());
  } catch (error) {
    endpoint.close();
    throw error;
  }
}

/**
 * Listens for raw QUIC connections on `hostname` (default 127.0.0.1) and
 * `port` (default: any free port) with `cert`/`key` (PEM), announcing `alpn`
 * (default `knul/1`).
 */
export function listenRawPeer(options: {
  cert: string;
  key: string;
  alpn?: string;
  hostname?: string;
  port?: number;
}): Promise<RawListener> {
  let endpoint: Deno.QuicEndpoint | undefined;
  try {
    endpoint = new Deno.QuicEndpoint({
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port ?? 0,
    });
    const listener = endpoint.listen({
      cert: options.cert,
      key: options.key,
      alpnProtocols: [options.alpn ?? KNUL_ALPN],
    });
    return Promise.resolve(rawListener(endpoint, listener));
  } catch (error) {
    endpoint?.close();
    return Promise.reject(error);
  }
}

function rawListener(endpoint: Deno.QuicEndpoint, listener: Deno.QuicListener): RawListener {
  const accepted = new Set<RawPeerConn>();
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    listener.stop();
    // Closing the endpoint rejects a pending accept() and closes every
    // connection accepted on it.
    endpoint.close();
  };
  return {
    port: endpoint.addr.port,
    async accept(): Promise<RawPeerConn> {
      const conn = wrapConnection(await listener.accept(), () => {});
      accepted.add(conn);
      return conn;
    },
    close,
    async [Symbol.asyncDispose](): Promise<void> {
      close();
      await Promise.all([...accepted].map((conn) => conn.closed.catch(() => {})));
    },
  };
}

function wrapConnection(conn: Deno.QuicConn, closeEndpoint: () => void): RawConnection {
  let bidiReader: ReadableStreamDefaultReader<Deno.QuicBidirectionalStream> | undefined;
  let uniReader: ReadableStreamDefaultReader<Deno.QuicReceiveStream> | undefined;
  let closeRequested = false;
  return {
    async openBi() {
      return wrapBi(await conn.createBidirectionalStream());
    },
    async openUni() {
      return wrapSend(await conn.createUnidirectionalStream());
    },
    async acceptBi() {
      bidiReader ??= conn.incomingBidirectionalStreams.getReader();
      const { value, done } = await bidiReader.read();
      if (done) throw new Error("acceptBi: the connection is closed");
      return wrapBi(value);
    },
    async acceptUni() {
      uniReader ??= conn.incomingUnidirectionalStreams.getReader();
      const { value, done } = await uniReader.read();
      if (done) throw new Error("acceptUni: the connection is closed");
      return wrapReceive(value);
    },
    sendDatagram: (bytes) => conn.sendDatagram(bytes),
    readDatagram: () => conn.readDatagram(),
    get maxDatagramSize() {
      return conn.maxDatagramSize;
    },
    get protocol() {
      return conn.protocol;
    },
    // A getter, not a field: Deno keeps the event loop alive while anyone
    // holds `conn.closed`, so it is only asked for when a caller wants it.
    get closed() {
      return conn.closed;
    },
    close(code, reason) {
      closeRequested = true;
      conn.close({ closeCode: code, reason });
    },
    async [Symbol.asyncDispose]() {
      if (!closeRequested) conn.close({ closeCode: 0, reason: "" });
      closeRequested = true;
      await conn.closed.catch(() => {});
      closeEndpoint();
    },
  };
}

function wrapBi(stream: Deno.QuicBidirectionalStream): RawBiStream {
  const send = wrapSend(stream.writable);
  const receive = wrapReceive(stream.readable);
  return { id: send.id, write: send.write, read: receive.read, close: send.close };
}

function wrapSend(stream: Deno.QuicSendStream): RawSendStream {
  const writer = stream.getWriter();
  return {
    id: stream.id,
    write: (bytes) => writer.write(bytes),
    close: () => writer.close(),
  };
}

function wrapReceive(stream: Deno.QuicReceiveStream): RawReceiveStream {
  const id = stream.id;
  const reader = stream.getReader();
  return {
    id,
    async read() {
      const { value, done } = await reader.read();
      return done ? null : value;
    },
    close: () => reader.cancel(),
  };
}

function isIPv4(hostname: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(hostname);
}
