/**
 * The HTTP engine: an HTTP/1.1 + HTTP/2 (h2c) server inside the kernel, on
 * Pingora's proxy pipeline. Native routes (static responses, reverse
 * proxying with load balancing and health checks) are answered without
 * entering JS; every other request goes to one `handler` with web-standard
 * `Request`/`Response` objects, like `Deno.serve`, through two shared-memory
 * rings (docs/http.md). The serve options and their checks are in
 * `_options.ts`, the JS side of the rings in `_bridge.ts`.
 *
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * await using server = kernel.http.serve({
 *   hostname: "127.0.0.1",
 *   port: 0,
 *   routes: [{ match: { path: "/health" }, respond: { body: "ok" } }],
 *   handler: (request, info) => new Response(`hello ${info.context.requestId}`),
 * });
 * console.log(await (await fetch(`http://127.0.0.1:${server.addr.port}/`)).text());
 * ```
 *
 * @module
 */

import {
  HttpServeRequest,
  HttpServerInfo,
  HttpServerStats as HttpServerStatsMessage,
} from "../_gen/proto/krepis/v1/http.ts";
import { checkInteger, checkObject, checkOptionalString, invalidArgument } from "../_check.ts";
import { type NetAddr, requireNetPermission } from "../_net.ts";
import type { KernelOwner } from "../_owner.ts";
import { ClosedError } from "../errors.ts";
import {
  HttpBridge,
  type HttpErrorHandler,
  type HttpHandler,
  type HttpHandlerObject,
  type HttpRequestInfo,
  openHttpRings,
} from "./_bridge.ts";
import {
  checkLimits,
  checkMatch,
  checkProxy,
  checkRespond,
  type HttpServeOptions,
  MAX_TIMEOUT_MS,
  splitHostPort,
  TOKEN,
} from "./_options.ts";

export type { HttpErrorHandler, HttpHandler, HttpHandlerObject, HttpRequestInfo };
export type {
  HttpHealthCheck,
  HttpLimits,
  HttpLoadBalancingMode,
  HttpMatch,
  HttpProxyOptions,
  HttpRespond,
  HttpRoute,
  HttpServeOptions,
} from "./_options.ts";

/** Grace period of `shutdown()` without `graceMs`, of `signal` and of `await using`. */
export const DEFAULT_HTTP_GRACE_MS = 10_000;

/**
 * Options of {@linkcode HttpServer.shutdown}.
 *
 * @example
 * ```ts
 * import type { HttpShutdownOptions } from "@krepis/sdk";
 * const options: HttpShutdownOptions = { graceMs: 5000 };
 * ```
 */
export interface HttpShutdownOptions {
  /** How long in-flight requests may finish before they are aborted, in ms. Default 10000. */
  graceMs?: number;
}

/**
 * Counters of one upstream of a proxy route.
 *
 * @example
 * ```ts ignore
 * for (const upstream of server.stats().upstreams) console.log(upstream.address, upstream.healthy);
 * ```
 */
export interface HttpUpstreamStats {
  /** `host:port` as configured. */
  readonly address: string;
  /** False while health checks (or failed connects) mark it down. */
  readonly healthy: boolean;
  /** Requests proxied to it right now. */
  readonly inFlight: number;
  /** Requests proxied to it so far. */
  readonly requests: number;
}

/**
 * Counters of a server, from {@linkcode HttpServer.stats}.
 *
 * @example
 * ```ts ignore
 * const { requestsJs, requestsNative, requestsProxied } = server.stats();
 * ```
 */
export interface HttpServerStats {
  /** Connections open now. */
  readonly connections: number;
  /** Connections accepted so far. */
  readonly connectionsAccepted: number;
  /** Requests answered by static routes. */
  readonly requestsNative: number;
  /** Requests answered by proxy routes. */
  readonly requestsProxied: number;
  /** Requests handed to the JS handler. */
  readonly requestsJs: number;
  /** JS requests whose response is not complete yet. */
  readonly jsInFlight: number;
  /** Requests refused by a limit (431, 413) or a timeout. */
  readonly refused: number;
  /** Every upstream of every proxy route, in route order. */
  readonly upstreams: HttpUpstreamStats[];
  /** True once `shutdown()` began. */
  readonly shuttingDown: boolean;
}

/**
 * The kernel's HTTP engine. Get it from {@linkcode Kernel.http}.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * await using server = kernel.http.serve({ port: 0, handler: () => new Response("hi") });
 * console.log(server.addr.port);
 * ```
 */
export class Http {
  readonly #owner: KernelOwner;

  /** @internal Created by the kernel. */
  constructor(owner: KernelOwner) {
    this.#owner = owner;
  }

  /**
   * Binds and starts a server (synchronously: the port is bound when it
   * returns). Needs `--allow-net` for the address and for every upstream.
   *
   * @throws {InvalidArgumentError} a bad option (`details.field` names it).
   * @throws {PermissionError} without net permission for the address or an upstream.
   * @throws {IoError} the address is in use or cannot be bound.
   * @throws {UnsupportedError} on platforms without the engine (Windows).
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: null });
   * const controller = new AbortController();
   * const server = kernel.http.serve({
   *   hostname: "127.0.0.1",
   *   port: 0,
   *   routes: [
   *     { match: { path: "/health" }, respond: { status: 200, body: "ok" } },
   *     { match: { pathPrefix: "/api/" }, proxy: { upstreams: ["127.0.0.1:8081"] } },
   *   ],
   *   handler: async (request, info) => {
   *     const body = await request.text();
   *     return Response.json({ body, tenant: info.context.tenantId });
   *   },
   *   signal: controller.signal,
   * });
   * controller.abort(); // shutdown with the default grace period
   * await server.finished;
   * ```
   */
  serve(options: HttpServeOptions): HttpServer {
    this.#owner.assertOpen("http.serve");
    const opts = checkObject("serve options", options) as HttpServeOptions;
    const hostname = options.hostname === undefined
      ? "0.0.0.0"
      : checkOptionalString("hostname", opts.hostname);
    const port = checkInteger("port", opts.port ?? 8000, 0, 65535);
    const routesOption = opts.routes ?? [];
    if (!Array.isArray(routesOption)) invalidArgument("routes", "must be an array");
    const upstreams = new Set<string>();
    const routes = routesOption.map((value, index) => {
      const field = `routes[${index}]`;
      const route = checkObject(field, value);
      const match = checkMatch(`${field}.match`, route.match);
      if ((route.respond === undefined) === (route.proxy === undefined)) {
        invalidArgument(field, "must have exactly one of respond and proxy");
      }
      if (route.respond !== undefined) {
        return { match, respond: checkRespond(`${field}.respond`, route.respond) };
      }
      const proxy = checkProxy(`${field}.proxy`, route.proxy);
      for (const upstream of proxy.upstreams) upstreams.add(upstream);
      return { match, proxy };
    });
    const given = opts.handler;
    let handler: HttpHandler | null = null;
    if (typeof given === "function") {
      handler = given;
    } else if (
      typeof given === "object" && given !== null && typeof given.handleHttp === "function"
    ) {
      handler = (request, info) => given.handleHttp(request, info);
    } else if (given !== undefined) {
      invalidArgument(
        "handler",
        "must be a function or an object with handleHttp (a runtime pool)",
      );
    }
    if (opts.onError !== undefined && typeof opts.onError !== "function") {
      invalidArgument("onError", "must be a function");
    }
    const tenantHeader = checkOptionalString("tenantHeader", opts.tenantHeader).toLowerCase();
    if (tenantHeader !== "" && !TOKEN.test(tenantHeader)) {
      invalidArgument("tenantHeader", "must be a header name");
    }
    if (opts.h2c !== undefined && typeof opts.h2c !== "boolean") {
      invalidArgument("h2c", "must be a boolean");
    }
    const signal = opts.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      invalidArgument("signal", "must be an AbortSignal");
    }
    const limits = checkLimits(opts.limits);

    const bind = port === 0 ? hostname : `${hostname}:${port}`;
    requireNetPermission(bind, `serving HTTP on ${hostname}:${port}`);
    for (const upstream of upstreams) {
      const [host, upstreamPort] = splitHostPort(upstream)!;
      requireNetPermission(
        host.includes(":") ? `[${host}]:${upstreamPort}` : upstream,
        `proxying to ${upstream}`,
      );
    }

    const request = HttpServeRequest.encode({
      hostname,
      port,
      routes,
      jsHandler: handler !== null,
      limits,
      tenantHeader,
      disableH2c: opts.h2c === false,
    }).finish();
    const owner = this.#owner;
    const native = owner.native;
    const rings = openHttpRings(owner);
    let info: HttpServerInfo;
    try {
      info = HttpServerInfo.decode(
        native.readOutput((out, cap) =>
          native.symbols.krepis_http_serve(
            owner.handle,
            request,
            request.length,
            rings.toJs.nativeHandle,
            rings.toKernel.nativeHandle,
            out,
            cap,
          )
        ),
      );
    } catch (error) {
      rings.toJs.close();
      rings.toKernel.close();
      throw error;
    }
    const addr = { hostname: info.hostname, port: info.port };
    const bridge = new HttpBridge(owner, rings, {
      handler,
      onError: opts.onError ?? null,
      fallbackHost: addr.hostname.includes(":")
        ? `[${addr.hostname}]:${addr.port}`
        : `${addr.hostname}:${addr.port}`,
    });
    return new HttpServer(owner, info.handle, addr, rings, bridge, signal);
  }
}

/**
 * A running HTTP server from {@linkcode Http.serve}. `await using` shuts it
 * down gracefully and waits until it stopped.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * const server = kernel.http.serve({ hostname: "127.0.0.1", port: 0, handler: () => new Response("hi") });
 * const response = await fetch(`http://127.0.0.1:${server.addr.port}/`);
 * console.log(await response.text()); // "hi"
 * await server.shutdown({ graceMs: 1000 });
 * ```
 */
export class HttpServer implements AsyncDisposable {
  /** The bound address (the real port when 0 was asked for). */
  readonly addr: NetAddr;
  /**
   * Resolves once the server stopped: after `shutdown()` (in-flight requests
   * finished or were aborted), `signal`, or the kernel closing. Never rejects.
   */
  readonly finished: Promise<void>;
  readonly #owner: KernelOwner;
  readonly #handle: number;
  #shutdownStarted = false;
  #done = false;

  /** @internal Created by {@linkcode Http.serve}. */
  constructor(
    owner: KernelOwner,
    handle: number,
    addr: NetAddr,
    rings: { toJs: { close(): void }; toKernel: { close(): void } },
    bridge: HttpBridge,
    signal: AbortSignal | undefined,
  ) {
    this.#owner = owner;
    this.#handle = handle;
    this.addr = addr;
    const onAbort = () => void this.shutdown().catch(() => {});
    this.finished = bridge.run().then(() => {
      this.#done = true;
      signal?.removeEventListener("abort", onAbort);
      // The kernel closed the kernel → JS ring: everything stopped. Detach
      // this side's views first, then free the server.
      rings.toJs.close();
      rings.toKernel.close();
      if (!owner.closed) owner.native.symbols.krepis_http_free(handle);
    }).catch(() => {/* freeing failed: the kernel is gone */});
    if (signal !== undefined) {
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
  }

  /**
   * Stops accepting connections, lets requests in flight finish for `graceMs`,
   * then aborts the rest (their `request.signal` aborts). Resolves when the
   * server stopped (as {@linkcode HttpServer.finished}). Idempotent: a later
   * call waits for the first.
   *
   * @throws {InvalidArgumentError} a bad `graceMs`.
   *
   * @example
   * ```ts ignore
   * await server.shutdown({ graceMs: 5000 });
   * ```
   */
  shutdown(options: HttpShutdownOptions = {}): Promise<void> {
    try {
      checkObject("shutdown options", options);
      const graceMs = checkInteger(
        "graceMs",
        options.graceMs ?? DEFAULT_HTTP_GRACE_MS,
        0,
        MAX_TIMEOUT_MS,
      );
      if (!this.#shutdownStarted && !this.#done && !this.#owner.closed) {
        this.#shutdownStarted = true;
        const native = this.#owner.native;
        native.check(native.symbols.krepis_http_shutdown(this.#handle, graceMs));
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return this.finished;
  }

  /**
   * The server's counters (one synchronous FFI call).
   *
   * @throws {ClosedError} once the server stopped.
   *
   * @example
   * ```ts ignore
   * console.log(server.stats().requestsJs);
   * ```
   */
  stats(): HttpServerStats {
    if (this.#done || this.#owner.closed) {
      throw new ClosedError("httpServer.stats: the server stopped");
    }
    const native = this.#owner.native;
    const stats = HttpServerStatsMessage.decode(
      native.readOutput((out, cap) => native.symbols.krepis_http_stats(this.#handle, out, cap)),
    );
    return {
      connections: Number(stats.connections),
      connectionsAccepted: Number(stats.connectionsAccepted),
      requestsNative: Number(stats.requestsNative),
      requestsProxied: Number(stats.requestsProxied),
      requestsJs: Number(stats.requestsJs),
      jsInFlight: Number(stats.jsInFlight),
      refused: Number(stats.refused),
      upstreams: stats.upstreams.map((upstream) => ({
        address: upstream.address,
        healthy: upstream.healthy,
        inFlight: Number(upstream.inFlight),
        requests: Number(upstream.requests),
      })),
      shuttingDown: stats.shuttingDown,
    };
  }

  /** Shuts down with the default grace period and waits until the server stopped. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}
