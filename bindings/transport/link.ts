/**
 * A KNUL link: packets sent through its send ring (the header written in
 * place by the KNUL codec, `_knul.ts`), received packets read in place from
 * its receive ring ({@linkcode Packet}), and a close that confirms delivery.
 * Links are made by `transport.ts` (connect, accept).
 *
 * @module
 */

import {
  KREPIS_CLOSE_NORMAL,
  KREPIS_FLAG_RELIABLE,
  KREPIS_RING_MAX_CAPACITY,
} from "../_gen/symbols.ts";
import { type LinkInfo, LinkStatus } from "../_gen/proto/krepis/v1/transport.ts";
import type { ReadonlyBytes } from "../_bytes.ts";
import { checkInteger, checkOptions, invalidArgument } from "../_check.ts";
import { EventKind } from "../_events.ts";
import { errorFromNative } from "../_native.ts";
import type { NetAddr } from "../_net.ts";
import type { KernelOwner } from "../_owner.ts";
import { openRing, recordSize, type RingReader, type RingWriter } from "../_ring.ts";
import { type Context, Priority } from "../context.ts";
import { ClosedError, InvalidArgumentError, type KrepisError } from "../errors.ts";
import { KNUL_HEADER_BYTES, knulContextWords, KnulOffset, writeKnulDataHeader } from "./_knul.ts";

/** KNUL header bytes in front of every packet (on the wire and in the rings). */
const HEADER = KNUL_HEADER_BYTES;
/** Where a received packet's fields sit (read in place, per packet). */
const FLAGS_AT = KnulOffset.flags;
const PRIORITY_AT = KnulOffset.priority;
const TENANT_AT = KnulOffset.tenant;
const TRACE_ID_AT = KnulOffset.traceId;
/** Smallest ring a link gets. */
const MIN_RING_BYTES = 64 * 1024;
const encoder = new TextEncoder();

/** Options of {@linkcode Link.send}. */
export interface SendOptions {
  /**
   * The explicit request context: its tenant (hashed) and W3C trace id (32
   * hex digits) travel in the packet header, and its priority unless
   * `priority` is given.
   */
  ctx?: Context;
  /** 0 (lowest) – 255 (highest). Default: `ctx.priority`, else 128. */
  priority?: number;
  /**
   * `true` (default): delivered, in order, exactly once (the link's stream).
   * `false`: one QUIC datagram; may be lost, must fit
   * {@linkcode Link.maxDatagramBytes}.
   */
  reliable?: boolean;
}

/** Options of {@linkcode Link.close}. */
export interface LinkCloseOptions {
  /** KNUL close code (docs/knul.md): 0 normal (default), 1 going away, 2–5 errors. */
  code?: number;
  /** A short UTF-8 reason the peer sees (at most 1024 bytes are sent). */
  reason?: string;
  /**
   * How long the whole close may take, in ms: sending what is still queued,
   * then the peer's confirmation. Past it, the link ends with a
   * `ConnectionError` (`details.timeoutMs`) saying delivery was not
   * confirmed. Default 30000.
   */
  timeoutMs?: number;
}

/** How a link ended. */
export interface LinkCloseInfo {
  /** KNUL close code: 0 normal, 1 going away, 2 protocol, 3 version, 4 too large, 5 policy. */
  code: number;
  /** The close reason (UTF-8). */
  reason: string;
  /** True when the peer closed the link (or failed), false when this side did. */
  byPeer: boolean;
  /** The error that ended the link, or `null` for a clean close. */
  error: KrepisError | null;
}

/** Counters of a link. */
export interface LinkStats {
  /** Packets the kernel took from the send ring. */
  packetsSent: number;
  /** Payload bytes of those packets. */
  bytesSent: number;
  /** Packets delivered into the receive ring. */
  packetsReceived: number;
  /** Payload bytes of those packets. */
  bytesReceived: number;
  /** Unreliable packets dropped (on arrival while JS was behind, or too large for the path). */
  datagramsDropped: number;
  /** Smoothed round-trip time, in milliseconds. */
  rttMs: number;
  /** QUIC congestion window. */
  congestionWindowBytes: number;
  /** QUIC packets declared lost (and retransmitted when reliable). */
  lostPackets: number;
  /** UDP datagrams sent on the wire (QUIC packets, coalesced). */
  udpDatagramsSent: number;
  /** UDP datagrams received. */
  udpDatagramsReceived: number;
}

/** The two rings of a link (the kernel claims them when it connects or accepts). */
export interface LinkRings {
  receive: RingReader;
  send: RingWriter;
}

/** Ring bytes for packets up to `maxPacketBytes`: room for about four. */
function ringBytes(maxPacketBytes: number): number {
  const record = recordSize(HEADER + maxPacketBytes);
  let capacity = MIN_RING_BYTES;
  while (capacity < 4 * record && capacity < KREPIS_RING_MAX_CAPACITY) capacity *= 2;
  return capacity;
}

/** Opens a link's rings, sized for packets up to `maxPacketBytes`. */
export function openLinkRings(owner: KernelOwner, maxPacketBytes: number): LinkRings {
  const capacity = ringBytes(maxPacketBytes);
  const receive = openRing(owner, { capacity, direction: "toJs" });
  try {
    return { receive, send: openRing(owner, { capacity, direction: "toKernel" }) };
  } catch (error) {
    receive.close();
    throw error;
  }
}

/**
 * Safety net: a link the application dropped without closing is freed when
 * it is garbage-collected (its rings have their own nets).
 */
const linkLeaks = new FinalizationRegistry<{ owner: KernelOwner; handle: number }>(
  ({ owner, handle }) => {
    if (!owner.closed) owner.native.symbols.krepis_link_free(handle);
  },
);

/**
 * A received packet: a zero-copy view into the link's receive ring, valid
 * until the next packet is taken from the link (next iteration), the link
 * closes, or `release()`. Copy (`data.slice()`) what must outlive that.
 *
 * @example
 * ```ts ignore
 * for await (const packet of link) {
 *   if (packet.tenantHash !== expectedTenant) continue;
 *   const kept = packet.data.slice(); // a copy outlives the packet
 *   console.log(packet.priority, packet.traceId, kept.length);
 * }
 * ```
 */
export class Packet {
  readonly #link: Link;
  readonly #reader: RingReader;
  readonly #generation: number;
  readonly #offset: number;
  /** Payload bytes. */
  readonly length: number;
  /** Whether it came on the reliable stream (else as a datagram). */
  readonly reliable: boolean;
  /** The sender's priority, 0–255. */
  readonly priority: number;

  /** @internal Created by {@linkcode Link}. */
  constructor(link: Link, reader: RingReader, offset: number, recordLength: number) {
    this.#link = link;
    this.#reader = reader;
    this.#generation = reader.generation;
    this.#offset = offset;
    this.length = recordLength - HEADER;
    const data = reader.data;
    const flags = data[offset + FLAGS_AT] | (data[offset + FLAGS_AT + 1] << 8);
    this.reliable = (flags & KREPIS_FLAG_RELIABLE) !== 0;
    this.priority = data[offset + PRIORITY_AT];
  }

  /** True until the next packet is taken or `release()`. */
  get valid(): boolean {
    return this.#reader.generation === this.#generation && !this.#reader.detached;
  }

  #check(what: string): Uint8Array {
    if (!this.valid) {
      throw new ClosedError(
        `packet.${what}: the packet was released (a packet's view lasts until the next one)`,
      );
    }
    return this.#reader.data;
  }

  /** The payload (zero-copy, read-only). @throws {ClosedError} once released. */
  get data(): ReadonlyBytes {
    const data = this.#check("data");
    return data.subarray(
      this.#offset + HEADER,
      this.#offset + HEADER + this.length,
    ) as ReadonlyBytes;
  }

  /** FNV-1a 64 of the sender's `ctx.tenantId` (0n = none). @throws {ClosedError} once released. */
  get tenantHash(): bigint {
    const data = this.#check("tenantHash");
    const at = data.byteOffset + this.#offset + TENANT_AT;
    return new DataView(data.buffer, at, 8).getBigUint64(0, true);
  }

  /** The sender's W3C trace id (hex), or `null`. @throws {ClosedError} once released. */
  get traceId(): string | null {
    const data = this.#check("traceId");
    const at = this.#offset + TRACE_ID_AT;
    const bytes = data.subarray(at, at + 16);
    if (bytes.every((byte) => byte === 0)) return null;
    return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  }

  /** Gives the packet's ring space back now (it is given back at the next packet anyway). */
  release(): void {
    if (this.valid) this.#link._releaseCurrent();
  }
}

interface QueuedSend {
  bytes: Uint8Array | ReadonlyBytes;
  options: SendOptions | undefined;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * A KNUL link to a peer kernel: `send()` packets, `for await` the packets
 * that arrive, `close()` when done.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * const { cert, key } = kernel.transport.createDevCertificate();
 * await using listener = await kernel.transport.listen({ cert, key });
 * await using link = await kernel.transport.connect({
 *   hostname: "127.0.0.1",
 *   port: listener.addr.port,
 *   serverName: "localhost",
 *   caCerts: [cert],
 * });
 * await using peer = (await listener.accept())!;
 * await link.send(new TextEncoder().encode("ping"));
 * for await (const packet of peer) {
 *   await peer.send(packet.data); // echo (copied into the send ring)
 *   break;
 * }
 * ```
 */
export class Link implements AsyncIterable<Packet>, AsyncDisposable {
  /** The peer's address. */
  readonly remoteAddr: NetAddr;
  /** Largest payload this side accepts. */
  readonly maxPacketBytes: number;
  /** Largest reliable payload this side may send (the peer's limit and this side's ring). */
  readonly maxSendBytes: number;
  /** Largest unreliable payload the path carries (datagram minus the 40-byte header). */
  readonly maxDatagramBytes: number;
  readonly #owner: KernelOwner;
  readonly #handle: number;
  readonly #receive: RingReader;
  readonly #send: RingWriter;
  readonly #sendWords: Uint32Array;
  readonly #queue: QueuedSend[] = [];
  #draining = false;
  /** Settles when the send queue has been written out (or failed). */
  #drained: Promise<void> = RESOLVED;
  #closing: Promise<void> | undefined;
  #freed = false;
  #closeInfo: LinkCloseInfo | undefined;

  /** @internal Created by {@linkcode Transport.connect} and {@linkcode Listener.accept}. */
  constructor(
    owner: KernelOwner,
    info: LinkInfo,
    rings: LinkRings,
    maxPacketBytes: number,
  ) {
    this.#owner = owner;
    this.#handle = info.handle;
    this.#receive = rings.receive;
    // A link's packets are often replies due within microseconds.
    this.#receive.spinWhileWaiting = true;
    this.#send = rings.send;
    const data = this.#send.data;
    this.#sendWords = new Uint32Array(data.buffer, data.byteOffset, data.length >> 2);
    this.remoteAddr = { hostname: info.remoteHostname, port: info.remotePort };
    this.maxPacketBytes = maxPacketBytes;
    this.maxSendBytes = Math.min(info.peerMaxPacketBytes, this.#send.maxRecordBytes - HEADER);
    this.maxDatagramBytes = Math.max(0, info.maxDatagramBytes - HEADER);
    linkLeaks.register(this, { owner, handle: info.handle }, this);
  }

  /** True once the link closed (either side) or is closing. */
  get closed(): boolean {
    return this.#closing !== undefined || this.#owner.closed || this.#receive.closed;
  }

  #checkSend(bytes: Uint8Array | ReadonlyBytes, options: SendOptions | undefined): void {
    if (this.#closing !== undefined) {
      throw new ClosedError(`link.send: the link is closing${this.#describeClose()}`);
    }
    if (!(bytes instanceof Uint8Array)) {
      throw new InvalidArgumentError("link.send: bytes must be a Uint8Array", {
        details: { field: "bytes" },
      });
    }
    if (options !== undefined && (typeof options !== "object" || options === null)) {
      throw new InvalidArgumentError("link.send: options must be an object");
    }
    const reliable = options?.reliable ?? true;
    const limit = reliable ? this.maxSendBytes : this.maxDatagramBytes;
    if (bytes.length > limit) {
      throw new InvalidArgumentError(
        reliable
          ? `link.send: a packet of ${bytes.length} bytes exceeds the link's limit of ${limit} bytes (maxPacketBytes)`
          : `link.send: an unreliable packet of ${bytes.length} bytes exceeds the path's datagram limit of ${limit} bytes`,
        { details: { field: "bytes", limit: String(limit) } },
      );
    }
  }

  /**
   * Sends one packet if the send ring has room now: true when queued for
   * the kernel, false when the ring is full (back-pressure: retry after
   * `await link.send(...)` or later). Never waits.
   *
   * @throws {InvalidArgumentError} wrong types, or a packet over the link's limit.
   * @throws {ClosedError} the link is closed.
   */
  trySend(bytes: Uint8Array | ReadonlyBytes, options?: SendOptions): boolean {
    this.#checkSend(bytes, options);
    if (this.#queue.length > 0) return false; // keep order behind waiting sends
    return this.#write(bytes, options);
  }

  /** Copies one packet into the send ring; false when it is full now. */
  #write(bytes: Uint8Array | ReadonlyBytes, options: SendOptions | undefined): boolean {
    // Sends queued before close() still go out while the link closes; the
    // kernel closes the send ring once the link ended (or the peer closed).
    if (this.#freed || this.#owner.closed || this.#send.closed) {
      throw new ClosedError(`link.send: the link is closed${this.#describeClose()}`);
    }
    const ctx = options?.ctx;
    let priority = options?.priority ?? ctx?.priority ?? Priority.NORMAL;
    if (!Number.isInteger(priority) || priority < 0 || priority > 255) {
      throw new InvalidArgumentError(`link.send: priority must be 0–255, got ${priority}`, {
        details: { field: "priority" },
      });
    }
    priority |= 0;
    const reliable = options?.reliable ?? true;
    const context = ctx === undefined ? null : knulContextWords(ctx);
    const send = this.#send;
    const offset = send.reserve(HEADER + bytes.length, 0);
    if (offset < 0) return false;
    writeKnulDataHeader(this.#sendWords, offset >> 2, reliable, priority, bytes.length, context);
    send.data.set(bytes, offset + HEADER);
    send.flush();
    return true;
  }

  /**
   * Sends one packet: reliable packets arrive in order, exactly once;
   * unreliable ones may be lost. Resolves once the packet is in the send
   * ring (the bytes were copied: `bytes` may be reused). While the ring is
   * full (the peer or the network is slower) it waits: back-pressure.
   *
   * @throws {InvalidArgumentError} wrong types, or a packet over the link's limit (`details.limit`).
   * @throws {ClosedError} the link is closed (before the packet was queued).
   *
   * @example
   * ```ts ignore
   * await link.send(new TextEncoder().encode("hello"), { reliable: true, priority: 200 });
   * ```
   */
  send(bytes: Uint8Array | ReadonlyBytes, options?: SendOptions): Promise<void> {
    try {
      this.#checkSend(bytes, options);
      if (this.#queue.length === 0 && this.#write(bytes, options)) return RESOLVED;
    } catch (error) {
      return Promise.reject(error);
    }
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.#queue.push({ bytes, options, resolve, reject });
    if (!this.#draining) void this.#drainQueue();
    return promise;
  }

  /** Writes queued sends in order as the ring frees space. */
  async #drainQueue(): Promise<void> {
    this.#draining = true;
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#drained = promise;
    try {
      while (this.#queue.length > 0) {
        const next = this.#queue[0];
        let written: boolean;
        try {
          written = this.#write(next.bytes, next.options);
        } catch (error) {
          this.#queue.shift();
          next.reject(error);
          continue;
        }
        if (written) {
          this.#queue.shift();
          next.resolve();
          continue;
        }
        const ready = await this.#send.waitForSpace(recordSizeOf(next.bytes.length));
        if (!ready) {
          const error = new ClosedError(`link.send: the link closed${this.#describeClose()}`);
          for (const queued of this.#queue.splice(0)) queued.reject(error);
        }
      }
    } finally {
      this.#draining = false;
      resolve();
    }
  }

  #describeClose(): string {
    const info = this.#closeInfo;
    if (info === undefined) return "";
    return ` (${info.byPeer ? "by the peer" : "by this side"}, code ${info.code}${
      info.reason ? `: ${info.reason}` : ""
    })`;
  }

  /**
   * The next packet, or `null` once the link closed cleanly and every packet
   * was read. Takes the place of the previous packet (its view ends).
   *
   * @throws {ProtocolError} the peer broke the protocol (the link is closed).
   * @throws {ConnectionError} the connection was lost or the peer closed with an error code.
   */
  async receive(): Promise<Packet | null> {
    const reader = this.#receive;
    while (true) {
      if (this.#freed || reader.detached) return null;
      const record = reader.read();
      if (record !== null) return new Packet(this, reader, record.offset, record.length);
      if (reader.closed) {
        if (reader.available !== 0) continue;
        const info = this.#finalStatus();
        if (info.error !== null) throw info.error;
        return null;
      }
      await reader.wait();
    }
  }

  /** @internal Gives back the current packet's ring space. */
  _releaseCurrent(): void {
    this.#receive.releaseCurrent();
  }

  /**
   * Packets until the link closes. Each packet's view lasts until the next
   * iteration. Ends normally on a clean close (code 0/1); throws the typed
   * error when the link failed.
   */
  [Symbol.asyncIterator](): AsyncIterator<Packet> {
    const reader = this.#receive;
    return {
      next: (): Promise<IteratorResult<Packet>> => {
        // Fast path: a packet is ready, no async frame per packet.
        if (!this.#freed && !reader.detached) {
          const record = reader.read();
          if (record !== null) {
            return Promise.resolve({
              done: false,
              value: new Packet(this, reader, record.offset, record.length),
            });
          }
        }
        return this.receive().then((packet) =>
          packet === null ? { done: true, value: undefined } : { done: false, value: packet }
        );
      },
      return: (): Promise<IteratorResult<Packet>> => {
        return Promise.resolve({ done: true, value: undefined });
      },
    };
  }

  #status(): LinkStatus {
    const native = this.#owner.native;
    return LinkStatus.decode(
      native.readOutput((out, cap) => native.symbols.krepis_link_status(this.#handle, out, cap)),
    );
  }

  /** The close information once the link ended (kept after it is freed). */
  #finalStatus(): LinkCloseInfo {
    if (this.#closeInfo !== undefined) return this.#closeInfo;
    if (this.#freed || this.#owner.closed) {
      return { code: 1, reason: "the kernel closed", byPeer: false, error: null };
    }
    const status = this.#status();
    const info: LinkCloseInfo = {
      code: status.closeCode,
      reason: status.closeReason,
      byPeer: status.closedByPeer,
      error: status.error === undefined ? null : errorFromNative(status.error),
    };
    if (!status.open) this.#closeInfo = info;
    return info;
  }

  /**
   * Resolves when the link has ended (either side, or a failure), with how.
   *
   * @example
   * ```ts ignore
   * const { code, reason, byPeer } = await link.ended;
   * ```
   */
  get ended(): Promise<LinkCloseInfo> {
    return this.#waitEnded();
  }

  async #waitEnded(): Promise<LinkCloseInfo> {
    while (!this.#freed && !this.#owner.closed) {
      const status = this.#status();
      if (!status.open) return this.#finalStatus();
      await this.#owner.events.wait(EventKind.linkClosed, this.#handle);
    }
    return this.#finalStatus();
  }

  /**
   * Counters and path figures of the link.
   *
   * @throws {ClosedError} after the link was closed and freed.
   */
  stats(): LinkStats {
    if (this.#freed || this.#owner.closed) {
      throw new ClosedError("link.stats: the link is closed");
    }
    const stats = this.#status().stats;
    return {
      packetsSent: Number(stats?.packetsSent ?? 0),
      bytesSent: Number(stats?.bytesSent ?? 0),
      packetsReceived: Number(stats?.packetsReceived ?? 0),
      bytesReceived: Number(stats?.bytesReceived ?? 0),
      datagramsDropped: Number(stats?.datagramsDropped ?? 0),
      rttMs: Number(stats?.rttMicros ?? 0) / 1000,
      congestionWindowBytes: Number(stats?.congestionWindowBytes ?? 0),
      lostPackets: Number(stats?.lostPackets ?? 0),
      udpDatagramsSent: Number(stats?.udpDatagramsSent ?? 0),
      udpDatagramsReceived: Number(stats?.udpDatagramsReceived ?? 0),
    };
  }

  /**
   * Closes the link gracefully and frees it. Every packet this side sent
   * (including sends still waiting for ring space) is delivered to the peer's
   * application (its receive ring), and the peer confirms it; without that
   * confirmation (within `timeoutMs`, 30 s by default, counted from this
   * call; or the peer failed or dropped packets because it closed too) the
   * result carries a `ConnectionError`. Packets
   * this side has not read yet are dropped: to receive everything, iterate
   * until the peer closes, then close. New sends are refused from now on.
   * Resolves with how the link ended. Idempotent.
   *
   * @example
   * ```ts ignore
   * await link.close({ code: 0, reason: "done" });
   * ```
   */
  close(options: LinkCloseOptions = {}): Promise<LinkCloseInfo> {
    if (this.#closing === undefined) {
      let code: number;
      let reason: Uint8Array<ArrayBuffer>;
      let timeoutMs: number;
      try {
        checkOptions("link.close", options);
        code = checkInteger("code", options.code ?? KREPIS_CLOSE_NORMAL, 0, 0xffff);
        timeoutMs = checkInteger(
          "timeoutMs",
          options.timeoutMs ?? CLOSE_TIMEOUT_MS,
          1,
          MAX_CLOSE_TIMEOUT_MS,
        );
        if (options.reason !== undefined && typeof options.reason !== "string") {
          invalidArgument("reason", "must be a string");
        }
        reason = encoder.encode(options.reason ?? "");
      } catch (error) {
        return Promise.reject(error);
      }
      this.#closing = this.#close(code, reason, timeoutMs);
    }
    return this.#closing.then(() => this.#finalStatus());
  }

  async #close(
    code: number,
    reason: Uint8Array<ArrayBuffer>,
    timeoutMs: number,
  ): Promise<void> {
    // One deadline for the whole close: the sends still waiting for space,
    // then the kernel's handshake gets what is left of it.
    const deadline = performance.now() + timeoutMs;
    if (this.#draining) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const expired = new Promise<void>((resolve) => timer = setTimeout(resolve, timeoutMs));
      await Promise.race([this.#drained, expired]);
      clearTimeout(timer);
      const error = new ClosedError(
        `link.close: the peer took no data within the close's ${timeoutMs} ms; queued sends were not sent`,
      );
      for (const queued of this.#queue.splice(0)) queued.reject(error);
    }
    const remaining = Math.max(1, Math.round(deadline - performance.now()));
    if (this.#owner.closed) return this.#free();
    // Hand back what was read, so the kernel counts only unread packets as dropped.
    if (!this.#receive.detached) this.#receive.releaseCurrent();
    const native = this.#owner.native;
    native.check(
      native.symbols.krepis_link_close(this.#handle, code, reason, reason.length, remaining),
    );
    // This side reads no more: the iterator ends, unread packets are dropped.
    this.#receive.close();
    await this.#waitEnded();
    this.#finalStatus();
    this.#free();
  }

  #free(): void {
    if (this.#freed) return;
    if (!this.#owner.closed) {
      try {
        this.#closeInfo ??= this.#finalStatus();
      } catch { /* the kernel already forgot the link */ }
    }
    this.#freed = true;
    linkLeaks.unregister(this);
    for (const queued of this.#queue.splice(0)) {
      queued.reject(new ClosedError("link.send: the link was closed"));
    }
    this.#receive.close();
    this.#send.close();
    if (!this.#owner.closed) this.#owner.native.symbols.krepis_link_free(this.#handle);
  }

  /** Closes the link gracefully (for `await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

const RESOLVED = Promise.resolve();
/** How long `close()` may take by default (docs/knul.md, "Close"). */
const CLOSE_TIMEOUT_MS = 30_000;
/** Longest `timeoutMs` (about 24 days: what `setTimeout` takes). */
const MAX_CLOSE_TIMEOUT_MS = 0x7fff_ffff;

function recordSizeOf(length: number): number {
  return recordSize(HEADER + length);
}
