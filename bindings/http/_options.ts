/**
 * What {@linkcode Http.serve} accepts: the route, proxy and limit options,
 * and their checks, which turn them into the kernel's request messages and
 * name the wrong field in an `InvalidArgumentError`.
 *
 * @module
 */

import {
  type HttpLimits as HttpLimitsMessage,
  HttpLoadBalancing,
  type HttpMatch as HttpMatchMessage,
  type HttpProxy as HttpProxyMessage,
  type HttpRespond as HttpRespondMessage,
} from "../_gen/proto/krepis/v1/http.ts";
import { checkInteger, checkObject, checkOptionalString, invalidArgument } from "../_check.ts";
import { InvalidArgumentError } from "../errors.ts";
import type { HttpErrorHandler, HttpHandler, HttpHandlerObject } from "./_bridge.ts";

/** Longest timeout or interval any option accepts, in ms (one day). */
export const MAX_TIMEOUT_MS: number = 86_400_000;
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
  /**
   * Answers requests no route matched: a function, or an object with
   * `handleHttp` such as a runtime pool (`handler: pool` forwards each request
   * from the JS thread to the pool's least-busy runtime). Without it they get 404.
   */
  handler?: HttpHandler | HttpHandlerObject;
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

/** An HTTP token (method, header name). */
export const TOKEN: RegExp = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function checkPath(field: string, value: unknown): string {
  const path = checkOptionalString(field, value);
  if (path !== "" && !path.startsWith("/")) {
    invalidArgument(field, `must start with "/", got "${path}"`);
  }
  return path;
}

/** A route's `match` (every request when absent). */
export function checkMatch(field: string, value: unknown): HttpMatchMessage {
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

/** A static route's response; the body is copied (later changes to it do not count). */
export function checkRespond(field: string, value: unknown): HttpRespondMessage {
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
export function splitHostPort(address: string): [string, number] | null {
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

/** A proxy route: upstreams, load balancing, health checks, timeout, retries. */
export function checkProxy(field: string, value: unknown): HttpProxyMessage {
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

/** The server's limits (`undefined`: the kernel's defaults). */
export function checkLimits(value: unknown): HttpLimitsMessage | undefined {
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
