/**
 * The HTTP engine: an HTTP/1.1 + HTTP/2 (h2c) server inside the kernel, on
 * Pingora's proxy pipeline. Native routes (static responses, reverse
 * proxying with load balancing and health checks) are answered without
 * entering JS; every other request goes to one `handler` with web-standard
 * `Request`/`Response` objects, like `Deno.serve`, through two shared-memory
 * rings (docs/http.md).
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
  HttpLoadBalancing,
  HttpServeRequest,
  HttpServerInfo,
  HttpServerStats as HttpServerStatsMessage,
} from "./_gen/proto/krepis/v1/http.ts";
import {
  HttpBridge,
  type HttpErrorHandler,
  type HttpHandler,
  type HttpRequestInfo,
  openHttpRings,
} from "./_http_bridge.ts";
import type { KernelOwner } from "./_owner.ts";
import { type NetAddr, requireNetPermission } from "./_net.ts";
import { checkInteger, checkObject, checkOptionalString, invalidArgument } from "./_check.ts";
import { ClosedError, InvalidArgumentError } from "./errors.ts";

export type { HttpErrorHandler, HttpHandler, HttpRequestInfo };

/** Grace period of `shutdown()` without `graceMs`, of `signal` and of `await using`. */
export const DEFAULT_HTTP_GRACE_MS = 10_000;
const MAX_TIMEOUT_MS = 86_400_000;
/** The kernel's limits (ffi/src/http): retries beyond the first attempt, head bytes. */
const MAX_RETRIES = 15;
const MAX_HEADER_BYTES = (1 << 20) - 1;

/**
 * Which requests a route answers. Every given field must match; an empty
 * match (or none) matches every request.
 *
 * @example
 * ```ts
 * import type { HttpMatch } from "@krepis/sdk";
 * const match: HttpMatch = { methods: ["GET", "HEAD"], host: "api.local", pathPrefix: "/v1/" };
 * ```
 */
export interface HttpMatch {
  /** Any of these methods (compared in upper case). */
  methods?: string[];
  /** The request's host without port, case-insensitive. */
  host?: string;
  /** Exact path (without the query). Starts with `/`. */
  path?: string;
  /** Path prefix. Starts with `/`. */
  pathPrefix?: string;
}

/**
 * A static response answered by the kernel.
 *
 * @example
 * ```ts
 * import type { HttpRespond } from "@krepis/sdk";
 * const ok: HttpRespond = { status: 200, headers: { "content-type": "text/plain" }, body: "ok" };
 * ```
 */
export interface HttpRespond {
  /** Status code, 200–599. Default 200. */
  status?: number;
  /** Response headers. */
  headers?: HeadersInit;
  /** Body: a string (sent as UTF-8) or bytes. Default empty. */
  body?: string | Uint8Array;
}

/**
 * Active health checking of a proxy route's upstreams.
 *
 * @example
 * ```ts
 * import type { HttpHealthCheck } from "@krepis/sdk";
 * const check: HttpHealthCheck = { path: "/health", intervalMs: 1000 };
 * ```
 */
export interface HttpHealthCheck {
  /** GET this path expecting 2xx/3xx. Default: a TCP connect. */
  path?: string;
  /** Time between checks, in ms. Default 5000. */
  intervalMs?: number;
}

/**
 * How a proxy route picks an upstream: in turn, the one with the fewest
 * requests in flight, or by the client's IP address (a client keeps its
 * upstream while it is healthy).
 *
 * @example
 * ```ts
 * import type { HttpLoadBalancingMode } from "@krepis/sdk";
 * const mode: HttpLoadBalancingMode = "least_conn";
 * ```
 */
export type HttpLoadBalancingMode = "round_robin" | "least_conn" | "hash";

/**
 * Reverse proxying to a pool of plain-HTTP/1.1 upstreams, with connection reuse.
 *
 * @example
 * ```ts
 * import type { HttpProxyOptions } from "@krepis/sdk";
 * const proxy: HttpProxyOptions = {
 *   upstreams: ["127.0.0.1:8081", "127.0.0.1:8082"],
 *   loadBalancing: "round_robin",
 *   healthCheck: { path: "/health", intervalMs: 1000 },
 *   timeoutMs: 5000,
 *   retries: 1,
 * };
 * ```
 */
export interface HttpProxyOptions {
  /** `host:port` of each upstream (`[v6]:port` for IPv6). Needs net permission for each. */
  upstreams: string[];
  /** Default `"round_robin"`. */
  loadBalancing?: HttpLoadBalancingMode;
  /** Absent = no active checks (failed connects still mark an upstream down). */
  healthCheck?: HttpHealthCheck;
  /** Connect, read and write timeout towards the upstream, in ms. Default 10000. */
  timeoutMs?: number;
  /** Further upstreams tried when connecting fails. Default 0, at most 15. */
  retries?: number;
}

/**
 * A native route: a match and what the kernel answers (exactly one of
 * `respond` and `proxy`).
 *
 * @example
 * ```ts
 * import type { HttpRoute } from "@krepis/sdk";
 * const routes: HttpRoute[] = [
 *   { match: { path: "/health" }, respond: { body: "ok" } },
 *   { match: { pathPrefix: "/api/" }, proxy: { upstreams: ["127.0.0.1:8081"] } },
 * ];
 * ```
 */
export type HttpRoute =
  | { match?: HttpMatch; respond: HttpRespond; proxy?: undefined }
  | { match?: HttpMatch; proxy: HttpProxyOptions; respond?: undefined };

/**
 * Limits that protect the server from large or slow clients.
 *
 * @example
 * ```ts
 * import type { HttpLimits } from "@krepis/sdk";
 * const limits: HttpLimits = { maxHeaderBytes: 16384, maxBodyBytes: 1 << 20 };
 * ```
 */
export interface HttpLimits {
  /**
   * Request line + header names and values, in bytes; larger → 431. Default
   * 32 KiB, at most 1 MiB − 1 (beyond that, or 256 headers, Pingora answers 400).
   */
  maxHeaderBytes?: number;
  /** Request body in bytes; larger → 413 (chunked bodies are counted). Default 10 MiB. */
  maxBodyBytes?: number;
  /**
   * A connection must deliver a complete request head within this time (ms)
   * of being opened or of its previous response, else it is closed (slowloris;
   * it also bounds keep-alive idle time). Default 30000.
   */
  headerTimeoutMs?: number;
  /** Longest wait (ms) for the client's next body bytes or for it to accept response bytes. Default 30000. */
  bodyTimeoutMs?: number;
}

/**
 * Options of {@linkcode Http.serve}.
 *
 * @example
 * ```ts
 * import type { HttpServeOptions } from "@krepis/sdk";
 * const options: HttpServeOptions = {
 *   hostname: "127.0.0.1",
 *   port: 8080,
 *   handler: () => new Response("hello"),
 *   limits: { maxBodyBytes: 1 << 20 },
 * };
 * ```
 */
export interface HttpServeOptions {
  /** Address to bind. Default `"0.0.0.0"`. */
  hostname?: string;
  /** TCP port; 0 picks a free one ({@linkcode HttpServer.addr} tells). Default 8000. */
  port?: number;
  /** Native routes, tried in order; the first match answers. */
  routes?: HttpRoute[];
  /** Answers requests no route matched. Without it they get 404. */
  handler?: HttpHandler;
  /**
   * Turns an error of `handler` (a throw, a rejection, a value that is not a
   * `Response`) into a response. Default: an empty-handed 500.
   */
  onError?: HttpErrorHandler;
  /** Size and time limits. */
  limits?: HttpLimits;
  /** Header carrying the tenant id (`info.context.tenantId`). Default `"x-tenant-id"`. */
  tenantHeader?: string;
  /** Accept HTTP/2 with prior knowledge (h2c) on the cleartext port. Default true. */
  h2c?: boolean;
  /** Aborting it shuts the server down with the default grace period (10 s). */
  signal?: AbortSignal;
}

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

// ---------------------------------------------------------------------------
// Option checks

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function checkPath(field: string, value: unknown): string {
  const path = checkOptionalString(field, value);
  if (path !== "" && !path.startsWith("/")) {
    invalidArgument(field, `must start with "/", got "${path}"`);
  }
  return path;
}

function checkMatch(field: string, value: unknown) {
  if (value === undefined) return { methods: [], host: "", path: "", pathPrefix: "" };
  const match = checkObject(field, value);
  const methods = match.methods ?? [];
  if (
    !Array.isArray(methods) ||
    methods.some((method) => typeof method !== "string" || !TOKEN.test(method))
  ) {
    invalidArgument(`${field}.methods`, "must be an array of HTTP method names");
  }
  const host = checkOptionalString(`${field}.host`, match.host).toLowerCase();
  if (/:\d*$/.test(host) && !/^\[[^\]]*\]$/.test(host)) {
    invalidArgument(`${field}.host`, `must be a host name without a port, got "${host}"`);
  }
  return {
    methods: (methods as string[]).map((method) => method.toUpperCase()),
    host,
    path: checkPath(`${field}.path`, match.path),
    pathPrefix: checkPath(`${field}.pathPrefix`, match.pathPrefix),
  };
}

const encoder = new TextEncoder();

/** Headers about the connection, not the response: the server's business. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

function checkRespond(field: string, value: unknown) {
  const respond = checkObject(field, value);
  const status = checkInteger(`${field}.status`, respond.status ?? 200, 200, 599);
  let headers: { name: string; value: string }[];
  try {
    headers = [...new Headers(respond.headers as HeadersInit | undefined)].map((
      [name, value],
    ) => ({ name, value }));
  } catch (cause) {
    throw new InvalidArgumentError(`${field}.headers: ${(cause as Error).message}`, {
      cause,
      details: { field: `${field}.headers` },
    });
  }
  const hop = headers.find(({ name }) => HOP_BY_HOP.has(name));
  if (hop !== undefined) {
    invalidArgument(
      `${field}.headers`,
      `"${hop.name}" is a connection-level header, which the server sets itself`,
    );
  }
  const body = respond.body ?? "";
  if (typeof body !== "string" && !(body instanceof Uint8Array)) {
    invalidArgument(`${field}.body`, "must be a string or a Uint8Array");
  }
  return {
    status,
    headers,
    body: typeof body === "string" ? encoder.encode(body) : body.slice(),
  };
}

/** `host:port` → [host, port] (host without IPv6 brackets), or null. */
function splitHostPort(address: string): [string, number] | null {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]\s/]+)):(\d{1,5})$/.exec(address);
  if (match === null) return null;
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return null;
  return [match[1] ?? match[2], port];
}

const LOAD_BALANCING: Record<HttpLoadBalancingMode, HttpLoadBalancing> = {
  round_robin: HttpLoadBalancing.HTTP_LOAD_BALANCING_ROUND_ROBIN,
  least_conn: HttpLoadBalancing.HTTP_LOAD_BALANCING_LEAST_CONN,
  hash: HttpLoadBalancing.HTTP_LOAD_BALANCING_HASH,
};

function checkProxy(field: string, value: unknown) {
  const proxy = checkObject(field, value);
  const upstreams = proxy.upstreams;
  if (
    !Array.isArray(upstreams) || upstreams.length === 0 ||
    upstreams.some((upstream) => typeof upstream !== "string" || splitHostPort(upstream) === null)
  ) {
    invalidArgument(
      `${field}.upstreams`,
      'must be a non-empty array of "host:port" strings (port 1–65535)',
    );
  }
  const mode = proxy.loadBalancing ?? "round_robin";
  if (typeof mode !== "string" || !Object.hasOwn(LOAD_BALANCING, mode)) {
    invalidArgument(`${field}.loadBalancing`, 'must be "round_robin", "least_conn" or "hash"');
  }
  let healthCheck: { path: string; intervalMs: number } | undefined;
  if (proxy.healthCheck !== undefined) {
    const check = checkObject(`${field}.healthCheck`, proxy.healthCheck);
    healthCheck = {
      path: checkPath(`${field}.healthCheck.path`, check.path),
      intervalMs: check.intervalMs === undefined
        ? 0
        : checkInteger(`${field}.healthCheck.intervalMs`, check.intervalMs, 10, MAX_TIMEOUT_MS),
    };
  }
  return {
    upstreams: upstreams as string[],
    loadBalancing: LOAD_BALANCING[mode as HttpLoadBalancingMode],
    healthCheck,
    timeoutMs: proxy.timeoutMs === undefined
      ? 0
      : checkInteger(`${field}.timeoutMs`, proxy.timeoutMs, 1, MAX_TIMEOUT_MS),
    retries: checkInteger(`${field}.retries`, proxy.retries ?? 0, 0, MAX_RETRIES),
  };
}

function checkLimits(value: unknown) {
  if (value === undefined) return undefined;
  const limits = checkObject("limits", value);
  const limit = (name: string, max: number) =>
    limits[name] === undefined ? 0 : checkInteger(`limits.${name}`, limits[name], 1, max);
  return {
    maxHeaderBytes: limit("maxHeaderBytes", MAX_HEADER_BYTES),
    maxBodyBytes: BigInt(limit("maxBodyBytes", Number.MAX_SAFE_INTEGER)),
    headerTimeoutMs: limit("headerTimeoutMs", MAX_TIMEOUT_MS),
    bodyTimeoutMs: limit("bodyTimeoutMs", MAX_TIMEOUT_MS),
  };
}

// ---------------------------------------------------------------------------

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
    if (opts.handler !== undefined && typeof opts.handler !== "function") {
      invalidArgument("handler", "must be a function");
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
      jsHandler: opts.handler !== undefined,
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
      handler: opts.handler ?? null,
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
