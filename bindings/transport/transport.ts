/**
 * KNUL: encrypted packet links between kernels, over QUIC (TLS 1.3, ALPN
 * `knul/1`), with packets delivered to JS through shared-memory rings
 * (zero-copy, no callback per packet). The wire protocol is in
 * `docs/knul.md`. This module listens and connects; `link.ts` is the link
 * itself (sending, receiving, closing).
 *
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * const { cert, key } = kernel.transport.createDevCertificate();
 * await using listener = await kernel.transport.listen({ port: 0, cert, key });
 * await using link = await kernel.transport.connect({
 *   hostname: "127.0.0.1",
 *   port: listener.addr.port,
 *   serverName: "localhost",
 *   caCerts: [cert],
 * });
 * await link.send(new TextEncoder().encode("hello"));
 * await using peer = (await listener.accept())!;
 * for await (const packet of peer) {
 *   console.log(new TextDecoder().decode(packet.data)); // "hello"
 *   break;
 * }
 * ```
 *
 * @module
 */

import {
  KREPIS_DEFAULT_MAX_HANDSHAKES,
  KREPIS_KNUL_DEFAULT_MAX_PACKET_BYTES,
  KREPIS_KNUL_MAX_PACKET_BYTES,
} from "../_gen/symbols.ts";
import {
  ConnectRequest,
  DevCertificate as DevCertificateMessage,
  DevCertificateRequest,
  LinkInfo,
  ListenerInfo,
  ListenerStats as ListenerStatsMessage,
  ListenRequest,
  TransportOptions as TransportOptionsMessage,
} from "../_gen/proto/krepis/v1/transport.ts";
import {
  checkInteger,
  checkObject,
  checkOptions,
  checkString,
  checkStringList,
} from "../_check.ts";
import { EventKind } from "../_events.ts";
import { type NetAddr, requireNetPermission } from "../_net.ts";
import type { KernelOwner } from "../_owner.ts";
import { ClosedError, InvalidArgumentError } from "../errors.ts";
import { Link, type LinkRings, openLinkRings } from "./link.ts";

export type { NetAddr };

/**
 * Largest `maxPacketBytes` a listener or connect may set (256 MiB).
 *
 * @example
 * ```ts
 * import { MAX_PACKET_BYTES } from "@krepis/sdk";
 * console.log(MAX_PACKET_BYTES); // 268435456
 * ```
 */
export const MAX_PACKET_BYTES: number = KREPIS_KNUL_MAX_PACKET_BYTES;
/**
 * Default `maxPacketBytes` (1 MiB).
 *
 * @example
 * ```ts
 * import { DEFAULT_MAX_PACKET_BYTES } from "@krepis/sdk";
 * console.log(DEFAULT_MAX_PACKET_BYTES); // 1048576
 * ```
 */
export const DEFAULT_MAX_PACKET_BYTES: number = KREPIS_KNUL_DEFAULT_MAX_PACKET_BYTES;

/**
 * The kernel's transport budget (`Kernel.open({ transport })`): links and
 * the memory their receive windows may hold, across every listener and
 * connect of the kernel. Over budget, new links are refused (a listener
 * refuses the peer with close code 6 and counts it; `connect()` throws a
 * `ResourceExhaustedError`). docs/knul.md, "Limits".
 */
export interface TransportOptions {
  /** Links at most (accepted, waiting for `accept()`, connected; until freed). Default 10000. */
  maxLinks?: number;
  /**
   * Window bytes of all links at most: each link is charged its receive
   * ring, its QUIC receive window and QUIC's datagram buffer (about
   * 16.3 MiB at the default 1 MiB `maxPacketBytes`, 576 KiB at 1 KiB).
   * Default: a quarter of the machine's memory, at least 256 MiB.
   */
  maxWindowBytes?: number;
}

/** @internal Checks and encodes the transport options of `Kernel.open`. */
export function encodeTransportOptions(options: unknown): Uint8Array {
  const given = options === undefined ? {} : checkObject("transport", options);
  return TransportOptionsMessage.encode({
    maxLinks: given.maxLinks === undefined
      ? 0
      : checkInteger("transport.maxLinks", given.maxLinks, 1, 0xffff_ffff),
    maxWindowBytes: BigInt(
      given.maxWindowBytes === undefined ? 0 : checkInteger(
        "transport.maxWindowBytes",
        given.maxWindowBytes,
        1,
        Number.MAX_SAFE_INTEGER,
      ),
    ),
  }).finish();
}

/** A certificate and its private key, PEM-encoded. */
export interface DevCertificate {
  /** The certificate (`-----BEGIN CERTIFICATE-----`). */
  cert: string;
  /** The private key (PKCS#8 PEM). */
  key: string;
}

/** Options of {@linkcode Transport.createDevCertificate}. */
export interface DevCertificateOptions {
  /**
   * DNS names and IP addresses the certificate is valid for.
   * Default: `localhost`, `127.0.0.1`, `::1`.
   */
  names?: string[];
}

/** Options of {@linkcode Transport.listen}. */
export interface ListenOptions {
  /** Address to bind. Default `"127.0.0.1"`; `"0.0.0.0"` / `"::"` for all. */
  hostname?: string;
  /** UDP port; 0 (default) picks a free one (see {@linkcode Listener.addr}). */
  port?: number;
  /** PEM certificate chain the listener presents. */
  cert: string;
  /** PEM private key of `cert`. */
  key: string;
  /**
   * Largest payload a peer may send (and this side may send back), in bytes.
   * A packet of exactly this size is accepted; a larger one closes the link
   * with close code 4. Default 1 MiB, at most 256 MiB. Each link's two rings
   * are sized from it (about 4× each).
   */
  maxPacketBytes?: number;
  /**
   * When given, packets whose context names another tenant (or none) are
   * refused in the kernel, before JS sees them: the link closes with code 5.
   */
  tenants?: string[];
  /** Established links waiting for `accept()` at most (more are refused with close code 6). Default 1024. */
  backlog?: number;
  /**
   * This listener's links at most (waiting for `accept()` or accepted, until
   * freed); more are refused with close code 6 and counted in
   * {@linkcode ListenerStats.refusedOverBudget}. Default: only the kernel's
   * budget ({@linkcode TransportOptions.maxLinks}).
   */
  maxLinks?: number;
  /**
   * Window bytes of this listener's links at most (see
   * {@linkcode TransportOptions.maxWindowBytes}). Default: only the kernel's budget.
   */
  maxWindowBytes?: number;
  /**
   * Connections between their first packet and their hello at most. A
   * newcomer never waits: with every slot taken the oldest handshake is
   * dropped (code 6), and once half are taken newcomers get 2 s instead of
   * 10 s to finish, so peers that never send a hello cannot starve others.
   * Default 256.
   */
  maxHandshakes?: number;
}

/** Options of {@linkcode Transport.connect}. */
export interface ConnectOptions {
  /** Host name or IP address of the listener. */
  hostname: string;
  /** Its UDP port. */
  port: number;
  /** The name the server's certificate must carry. Default: `hostname`. */
  serverName?: string;
  /**
   * PEM certificates trusted to be or to sign the server's certificate.
   * Required: KNUL does not use a system trust store.
   */
  caCerts: string[];
  /** As {@linkcode ListenOptions.maxPacketBytes}. */
  maxPacketBytes?: number;
}

/** Counters of a listener. */
export interface ListenerStats {
  /** Links handed to `accept()`. */
  accepted: number;
  /** Connections refused before they became links (TLS, hello, version, backlog, budget). */
  refused: number;
  /** Why the last one was refused ("" when none was). */
  lastRefusal: string;
  /** Of `refused`: refused because a link or memory budget (this listener's or the kernel's) was spent. */
  refusedOverBudget: number;
  /** Handshakes in progress now. */
  handshakes: number;
  /** Handshakes dropped to make room for newer ones (every slot was taken). */
  handshakesEvicted: number;
  /** This listener's links holding budget now (waiting for `accept()` or accepted, until freed). */
  links: number;
  /** The window bytes they hold. */
  windowBytes: number;
}

/** Net permission for a UDP address (any port when `port` is 0). */
function netPermission(hostname: string, port: number, action: string): void {
  requireNetPermission(port === 0 ? hostname : `${hostname}:${port}`, action);
}

/**
 * The kernel's KNUL transport: listen for and connect links. Get it from
 * {@linkcode Kernel.transport}.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * const { cert, key } = kernel.transport.createDevCertificate();
 * await using listener = await kernel.transport.listen({ cert, key });
 * console.log(listener.addr.port);
 * ```
 */
export class Transport {
  readonly #owner: KernelOwner;
  readonly #options: Uint8Array;
  #handle: number | undefined;

  /** @internal Created by the kernel, with `encodeTransportOptions`' bytes. */
  constructor(owner: KernelOwner, options: Uint8Array = encodeTransportOptions(undefined)) {
    this.#owner = owner;
    this.#options = options;
  }

  /** The kernel's transport handle (its client endpoints), made on first use. */
  #transport(): number {
    if (this.#handle !== undefined) return this.#handle;
    const out = new Uint32Array(1);
    this.#owner.native.check(
      this.#owner.native.symbols.krepis_transport_open(
        this.#owner.handle,
        this.#options as Uint8Array<ArrayBuffer>,
        this.#options.length,
        out,
      ),
    );
    return this.#handle = out[0];
  }

  /**
   * Creates a self-signed certificate for development and tests: an
   * end-entity certificate (`CA:FALSE`) for `names`, which a client trusts by
   * passing the same `cert` in `caCerts`. Never use it in production.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: null });
   * const { cert, key } = kernel.transport.createDevCertificate({ names: ["localhost"] });
   * console.log(cert.startsWith("-----BEGIN CERTIFICATE-----"), key.length > 0);
   * ```
   */
  createDevCertificate(options: DevCertificateOptions = {}): DevCertificate {
    this.#owner.assertOpen("transport.createDevCertificate");
    checkOptions("createDevCertificate", options);
    const names = options.names ?? [];
    if (!Array.isArray(names) || names.some((name) => typeof name !== "string" || name === "")) {
      throw new InvalidArgumentError("names must be an array of non-empty strings", {
        details: { field: "names" },
      });
    }
    const request = DevCertificateRequest.encode({ names }).finish();
    const native = this.#owner.native;
    const message = DevCertificateMessage.decode(
      native.readOutput((out, cap) =>
        native.symbols.krepis_transport_dev_certificate(request, request.length, out, cap)
      ),
    );
    return { cert: message.certPem, key: message.keyPem };
  }

  /**
   * Listens for links on a UDP address. Needs `--allow-net` for it.
   *
   * @throws {PermissionError} without net permission for the address.
   * @throws {InvalidArgumentError} a bad option, certificate or key (`details.field`).
   * @throws {IoError} the address is in use or cannot be bound.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: null });
   * const { cert, key } = kernel.transport.createDevCertificate();
   * await using listener = await kernel.transport.listen({ hostname: "127.0.0.1", port: 0, cert, key });
   * for await (const link of listener) {
   *   await link.close();
   *   break;
   * }
   * ```
   */
  listen(options: ListenOptions): Promise<Listener> {
    try {
      return Promise.resolve(this.#listen(options));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #listen(options: ListenOptions): Listener {
    this.#owner.assertOpen("transport.listen");
    checkOptions("listen", options);
    const hostname = options.hostname === undefined
      ? "127.0.0.1"
      : checkString("hostname", options.hostname);
    const port = checkInteger("port", options.port ?? 0, 0, 65535);
    const maxPacketBytes = checkInteger(
      "maxPacketBytes",
      options.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES,
      0,
      MAX_PACKET_BYTES,
    );
    const backlog = checkInteger("backlog", options.backlog ?? 1024, 1, 1 << 20);
    const maxLinks = options.maxLinks === undefined
      ? 0
      : checkInteger("maxLinks", options.maxLinks, 1, 0xffff_ffff);
    const maxWindowBytes = options.maxWindowBytes === undefined
      ? 0
      : checkInteger("maxWindowBytes", options.maxWindowBytes, 1, Number.MAX_SAFE_INTEGER);
    const maxHandshakes = checkInteger(
      "maxHandshakes",
      options.maxHandshakes ?? KREPIS_DEFAULT_MAX_HANDSHAKES,
      1,
      1 << 20,
    );
    const tenants = checkStringList("tenants", options.tenants ?? []);
    netPermission(hostname, port, `listening on ${hostname}:${port}`);
    const request = ListenRequest.encode({
      hostname,
      port,
      certPem: checkString("cert", options.cert),
      keyPem: checkString("key", options.key),
      maxPacketBytes,
      tenants,
      backlog,
      maxLinks,
      maxWindowBytes: BigInt(maxWindowBytes),
      maxHandshakes,
    }).finish();
    const transport = this.#transport();
    const native = this.#owner.native;
    const info = ListenerInfo.decode(
      native.readOutput((out, cap) =>
        native.symbols.krepis_transport_listen(transport, request, request.length, out, cap)
      ),
    );
    return new Listener(this.#owner, info, maxPacketBytes);
  }

  /**
   * Connects a link to a listener. Needs `--allow-net` for the address.
   *
   * @throws {PermissionError} without net permission for the address.
   * @throws {InvalidArgumentError} a bad option or CA certificate.
   * @throws {ResourceExhaustedError} the kernel's link or window budget is spent ({@linkcode TransportOptions}).
   * @throws {ConnectionError} unreachable, refused by TLS (certificate, server name), refused by a busy listener (`details.closeCode` "6"), or timed out.
   * @throws {ProtocolError} the server does not speak KNUL version 1.
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
   * await link.send(new Uint8Array([1, 2, 3]));
   * ```
   */
  async connect(options: ConnectOptions): Promise<Link> {
    this.#owner.assertOpen("transport.connect");
    checkOptions("connect", options);
    const hostname = checkString("hostname", options.hostname);
    const port = checkInteger("port", options.port, 1, 65535);
    const serverName = options.serverName === undefined
      ? ""
      : checkString("serverName", options.serverName);
    const caCerts = options.caCerts;
    if (
      !Array.isArray(caCerts) || caCerts.length === 0 ||
      caCerts.some((cert) => typeof cert !== "string")
    ) {
      throw new InvalidArgumentError(
        "caCerts must be a non-empty array of PEM strings (KNUL trusts only the certificates you name)",
        { details: { field: "caCerts" } },
      );
    }
    const maxPacketBytes = checkInteger(
      "maxPacketBytes",
      options.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES,
      0,
      MAX_PACKET_BYTES,
    );
    netPermission(hostname, port, `connecting to ${hostname}:${port}`);
    const request = ConnectRequest.encode({
      hostname,
      port,
      serverName,
      caPems: caCerts,
      maxPacketBytes,
    }).finish();
    const transport = this.#transport();
    const rings = openLinkRings(this.#owner, maxPacketBytes);
    const native = this.#owner.native;
    let operation: number;
    try {
      operation = native.check(
        native.symbols.krepis_transport_connect(
          transport,
          request,
          request.length,
          rings.receive.nativeHandle,
          rings.send.nativeHandle,
        ),
      );
    } catch (error) {
      rings.receive.close();
      rings.send.close();
      throw error;
    }
    await this.#owner.events.wait(EventKind.connect, operation);
    this.#owner.assertOpen("transport.connect");
    let info: LinkInfo;
    try {
      info = LinkInfo.decode(
        native.readOutput((out, cap) =>
          native.symbols.krepis_transport_connect_result(transport, operation, out, cap)
        ),
      );
    } catch (error) {
      rings.receive.close();
      rings.send.close();
      throw error;
    }
    return new Link(this.#owner, info, rings, maxPacketBytes);
  }
}

/**
 * A bound KNUL listener: accepts links (`accept()` or `for await`).
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * const { cert, key } = kernel.transport.createDevCertificate();
 * await using listener = await kernel.transport.listen({ cert, key });
 * console.log(listener.addr); // { hostname: "127.0.0.1", port: … }
 * ```
 */
export class Listener implements AsyncIterable<Link>, AsyncDisposable {
  /** The bound address (the real port when 0 was asked for). */
  readonly addr: NetAddr;
  readonly #owner: KernelOwner;
  readonly #handle: number;
  readonly #maxPacketBytes: number;
  #spare: LinkRings | null = null;
  #closed = false;

  /** @internal Created by {@linkcode Transport.listen}. */
  constructor(
    owner: KernelOwner,
    info: ListenerInfo,
    maxPacketBytes: number,
  ) {
    this.#owner = owner;
    this.#handle = info.handle;
    this.#maxPacketBytes = maxPacketBytes;
    this.addr = { hostname: info.hostname, port: info.port };
    listenerLeaks.register(this, { owner, handle: info.handle }, this);
  }

  /** True once closed (by `close()` or the kernel). */
  get closed(): boolean {
    return this.#closed || this.#owner.closed;
  }

  /**
   * The next link that completed its handshake, or `null` once the listener
   * is closed.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: null });
   * const { cert, key } = kernel.transport.createDevCertificate();
   * const listener = await kernel.transport.listen({ cert, key });
   * setTimeout(() => listener.close(), 10);
   * console.log(await listener.accept()); // null
   * ```
   */
  async accept(): Promise<Link | null> {
    const native = this.#owner.native;
    while (!this.closed) {
      const rings = this.#spare ??= openLinkRings(this.#owner, this.#maxPacketBytes);
      let length: number;
      try {
        length = native.check(
          native.symbols.krepis_listener_accept(
            this.#handle,
            rings.receive.nativeHandle,
            rings.send.nativeHandle,
            scratch,
            scratch.length,
          ),
        );
      } catch (error) {
        // The kernel may have claimed the rings before failing: never reuse them.
        this.#spare = null;
        rings.receive.close();
        rings.send.close();
        throw error;
      }
      if (length > 0) {
        this.#spare = null;
        const info = LinkInfo.decode(scratch.subarray(0, length));
        return new Link(this.#owner, info, rings, this.#maxPacketBytes);
      }
      await this.#owner.events.wait(EventKind.listener, this.#handle);
    }
    return null;
  }

  /** Links as they arrive, until the listener closes. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Link> {
    while (true) {
      const link = await this.accept();
      if (link === null) return;
      yield link;
    }
  }

  /**
   * Connection counters (accepted, refused and why).
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: null });
   * const { cert, key } = kernel.transport.createDevCertificate();
   * await using listener = await kernel.transport.listen({ cert, key });
   * console.log(listener.stats().refused); // 0
   * ```
   */
  stats(): ListenerStats {
    if (this.closed) throw new ClosedError("listener.stats: the listener is closed");
    const native = this.#owner.native;
    const stats = ListenerStatsMessage.decode(
      native.readOutput((out, cap) => native.symbols.krepis_listener_stats(this.#handle, out, cap)),
    );
    return {
      accepted: Number(stats.accepted),
      refused: Number(stats.refused),
      lastRefusal: stats.lastRefusal,
      refusedOverBudget: Number(stats.refusedOverBudget),
      handshakes: stats.handshakes,
      handshakesEvicted: Number(stats.handshakesEvicted),
      links: stats.links,
      windowBytes: Number(stats.windowBytes),
    };
  }

  /**
   * Stops listening. Links already accepted stay open; links waiting for
   * `accept()` are closed with "going away". Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#owner.closed) return;
    this.#spare?.receive.close();
    this.#spare?.send.close();
    this.#spare = null;
    listenerLeaks.unregister(this);
    this.#owner.native.check(this.#owner.native.symbols.krepis_listener_close(this.#handle));
  }

  /** Closes the listener (for `await using`). */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}

/**
 * Safety net: a listener the application dropped without closing is closed
 * when it is garbage-collected.
 */
const listenerLeaks = new FinalizationRegistry<{ owner: KernelOwner; handle: number }>(
  ({ owner, handle }) => {
    if (!owner.closed) owner.native.symbols.krepis_listener_close(handle);
  },
);

/** Output buffer for LinkInfo (the kernel asks for at least 256 bytes). */
const scratch = new Uint8Array(1024);
