/**
 * The JS half of the HTTP engine's bridge (protocol: docs/http.md): requests
 * and their bodies arrive through one kernel → JS ring, responses leave through
 * one JS → kernel ring. One pump per server waits with the ring's own
 * `nonblocking` wait, drains everything available, then dispatches: one
 * wake-up per batch, never a callback per request. Responses written in the
 * same microtask wave are published with one store (and at most one notify).
 * An exchange's state and the `Request` subclass are in `_exchange.ts`; the
 * ordered JS → kernel writer is `_record_writer.ts`.
 *
 * @module
 */

import {
  KREPIS_HTTP_ABORT_STOPPING,
  KREPIS_HTTP_FLAG_ASCII,
  KREPIS_HTTP_FLAG_END,
  KREPIS_HTTP_FLAG_HAS_BODY,
  KREPIS_HTTP_FLAG_HTTP2,
  KREPIS_HTTP_FLAG_INLINE_BODY,
  KREPIS_HTTP_RING_BYTES,
  KREPIS_HTTP_TO_JS_ABORT,
  KREPIS_HTTP_TO_JS_BODY,
  KREPIS_HTTP_TO_JS_CREDIT,
  KREPIS_HTTP_TO_JS_REQUEST,
  KREPIS_HTTP_TO_KERNEL_ABORT,
  KREPIS_HTTP_TO_KERNEL_BODY,
  KREPIS_HTTP_TO_KERNEL_CREDIT,
} from "../_gen/symbols.ts";
import type { KernelOwner } from "../_owner.ts";
import { TurnBudget } from "../_events.ts";
import { openRing, type RingReader, type RingWriter } from "../_ring.ts";
import { type Context, Priority } from "../context.ts";
import { ClosedError } from "../errors.ts";
import { abortError, Exchange, HttpRequest } from "./_exchange.ts";
import { LAZY_REQUESTS, lazyRequest, type ResponseParts, responseParts } from "./_deno_fast.ts";
import { RecordWriter } from "./_record_writer.ts";

/** What a handler gets besides the `Request` (re-exported by http.ts). */
export interface HttpRequestInfo {
  /** The request's explicit context: `x-request-id` (or a kernel id), tenant, trace id. */
  readonly context: Context;
  /** The client's address. */
  readonly remoteAddr: { readonly hostname: string; readonly port: number };
  /** The HTTP version the client speaks. */
  readonly httpVersion: "1.1" | "2";
}

/** A JS route's handler. */
export type HttpHandler = (
  request: Request,
  info: HttpRequestInfo,
) => Response | Promise<Response>;

/**
 * An object that answers a server's requests, such as a runtime pool
 * (`handler: pool`: requests are answered by its sandboxed runtimes).
 */
export interface HttpHandlerObject {
  /** Answers one request. */
  handleHttp(request: Request, info: HttpRequestInfo): Response | Promise<Response>;
}

/** Turns a handler failure into the response the client gets. */
export type HttpErrorHandler = (error: unknown) => Response | Promise<Response>;

/** The two rings of a server. */
export interface HttpRings {
  toJs: RingReader;
  toKernel: RingWriter;
}

/** Creates a server's rings (the kernel claims them in `krepis_http_serve`). */
export function openHttpRings(owner: KernelOwner): HttpRings {
  const toJs = openRing(owner, { capacity: KREPIS_HTTP_RING_BYTES, direction: "toJs" });
  try {
    return {
      toJs,
      toKernel: openRing(owner, { capacity: KREPIS_HTTP_RING_BYTES, direction: "toKernel" }),
    };
  } catch (error) {
    toJs.close();
    throw error;
  }
}

/** A host[:port] authority (reg-name, IPv4 or [IPv6]); no path, query, userinfo. */
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::\d{0,5})?$/;

/** True when `host` is an authority the URL parser accepts (checked once per new host). */
function isAuthority(host: string): boolean {
  if (!AUTHORITY.test(host)) return false;
  try {
    new URL(`http://${host}/`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Methods a lazily built request may carry: the ones `new Request` would
 * normalize or accept as they are (an unusual one takes the standard path,
 * which validates and normalizes it).
 */
const KNOWN_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]);

/** Bytes `[start, end)` as a byte string: each byte one UTF-16 code unit (ISO-8859-1). */
function byteString(bytes: Uint8Array, start: number, end: number): string {
  if (end - start <= 4096) {
    return String.fromCharCode.apply(null, bytes.subarray(start, end) as unknown as number[]);
  }
  let text = "";
  for (let at = start; at < end; at += 4096) {
    text += byteString(bytes, at, Math.min(end, at + 4096));
  }
  return text;
}

/** Offsets of the CR of the first `count` CRLF-ended lines (the text's end for missing ones). */
function lineEnds(text: string, count: number): number[] {
  const ends: number[] = [];
  let at = 0;
  for (let line = 0; line < count; line++) {
    const end = text.indexOf("\r", at);
    if (end < 0) {
      while (ends.length < count) ends.push(text.length);
      break;
    }
    ends.push(end);
    at = end + 2;
  }
  return ends;
}

/** The `name: value` lines from `start` on, as a header list (lines without a colon skipped). */
function headerList(text: string, start: number): [string, string][] {
  const headers: [string, string][] = [];
  let at = start;
  while (at < text.length) {
    let end = text.indexOf("\r", at);
    if (end < 0) end = text.length;
    const colon = text.indexOf(":", at);
    if (colon > at && colon < end) {
      // Optional whitespace around the value is not part of it (RFC 9110 §5.5).
      let valueStart = colon + 1;
      let valueEnd = end;
      while (valueStart < valueEnd && isBlank(text.charCodeAt(valueStart))) valueStart++;
      while (valueEnd > valueStart && isBlank(text.charCodeAt(valueEnd - 1))) valueEnd--;
      headers.push([text.slice(at, colon), text.slice(valueStart, valueEnd)]);
    }
    at = end + 2;
  }
  return headers;
}

/** A space or a tab (optional whitespace around header values). */
function isBlank(code: number): boolean {
  return code === 32 || code === 9;
}

/** True when every code unit of `text` is ASCII (its UTF-8 bytes are its code units). */
function isAscii(text: string): boolean {
  for (let index = 0; index < text.length; index++) {
    if (text.charCodeAt(index) > 0x7f) return false;
  }
  return true;
}

/**
 * A handler's `info`, read from the REQUEST record when first asked for
 * (most handlers never look at it). Its fields are getters: `toJSON` and
 * the inspector show them like a plain object's.
 */
class RequestInfo implements HttpRequestInfo {
  readonly #text: string;
  readonly #ends: number[];
  readonly httpVersion: "1.1" | "2";
  #context: Context | null = null;
  #remoteAddr: { readonly hostname: string; readonly port: number } | null = null;

  constructor(text: string, ends: number[], http2: boolean) {
    this.#text = text;
    this.#ends = ends;
    this.httpVersion = http2 ? "2" : "1.1";
  }

  #line(index: number): string {
    return this.#text.slice(this.#ends[index - 1] + 2, this.#ends[index]);
  }

  get context(): Context {
    return this.#context ??= Object.freeze({
      requestId: this.#line(3),
      tenantId: this.#line(4) || null,
      traceId: this.#line(5) || null,
      priority: Priority.NORMAL,
      deadline: null,
    });
  }

  get remoteAddr(): { readonly hostname: string; readonly port: number } {
    if (this.#remoteAddr === null) {
      const remote = this.#line(2);
      const space = remote.lastIndexOf(" ");
      this.#remoteAddr = {
        hostname: remote.slice(0, space),
        port: Number(remote.slice(space + 1)) | 0,
      };
    }
    return this.#remoteAddr;
  }

  toJSON(): HttpRequestInfo {
    return { context: this.context, remoteAddr: this.remoteAddr, httpVersion: this.httpVersion };
  }

  [Symbol.for("Deno.customInspect")](inspect: (value: unknown) => string): string {
    return inspect(this.toJSON());
  }
}

const encoder = new TextEncoder();
/** Decodes ASCII text (UTF-8 decoding of ASCII is the identity, and the fastest path). */
const asciiDecoder = new TextDecoder();
const EMPTY = new Uint8Array(0);
const INTERNAL_ERROR_BODY = encoder.encode("Internal Server Error");
const BAD_REQUEST_BODY = encoder.encode("Bad Request");

/** Status codes whose responses never carry a body (and no content-length of 0). */
function isBodyless(status: number): boolean {
  return status < 200 || status === 204 || status === 304;
}

interface Fresh {
  exchange: Exchange;
  request: Request | null;
  info: HttpRequestInfo;
}

/** Options of {@linkcode HttpBridge}. */
export interface HttpBridgeOptions {
  handler: HttpHandler | null;
  onError: HttpErrorHandler | null;
  /** `host:port` used when a request has no host (HTTP/1.0). */
  fallbackHost: string;
}

/** Moves requests to the handler and responses back, for one server. */
export class HttpBridge {
  readonly #owner: KernelOwner;
  readonly #reader: RingReader;
  readonly #records: RecordWriter;
  readonly #readWords: Uint32Array;
  readonly #handler: HttpHandler | null;
  readonly #onError: HttpErrorHandler | null;
  readonly #fallbackHost: string;
  readonly #exchanges = new Map<number, Exchange>();
  /** REQUESTs of the current batch, dispatched once the batch is drained. */
  #fresh: Fresh[] = [];
  /** ABORTs of the current batch (their `abort` events run user code: after the drain). */
  #aborts: [Exchange, number][] = [];
  /** The last Host that passed the authority check (clients repeat theirs). */
  #validHost = "";
  #stopped = false;
  readonly #visit: (data: Uint8Array, offset: number, length: number, tag: number) => void;

  constructor(owner: KernelOwner, rings: HttpRings, options: HttpBridgeOptions) {
    this.#owner = owner;
    this.#reader = rings.toJs;
    this.#records = new RecordWriter(rings.toKernel);
    const readData = this.#reader.data;
    this.#readWords = new Uint32Array(readData.buffer, readData.byteOffset, readData.length >> 2);
    this.#handler = options.handler;
    this.#onError = options.onError;
    this.#fallbackHost = options.fallbackHost;
    this.#visit = (data, offset, length, tag) => this.#record(data, offset, length, tag);
  }

  /** Requests whose response is not complete yet (JS side). */
  get inFlight(): number {
    return this.#exchanges.size;
  }

  /**
   * Runs until the kernel closes the kernel → JS ring (the server stopped) or
   * the kernel closes. Never rejects: a failing handler only fails its request.
   */
  async run(): Promise<void> {
    const reader = this.#reader;
    const turns = new TurnBudget();
    try {
      while (!reader.detached) {
        this.#drain();
        if (reader.closed && reader.available === 0) break;
        if (reader.available > 0) {
          // More arrived meanwhile: go on, giving timers and I/O of
          // handlers a turn now and then under constant load.
          await turns.next();
          continue;
        }
        await reader.wait();
        turns.reset();
      }
    } finally {
      this.#stop();
    }
  }

  #drain(): void {
    this.#reader.drain(this.#visit);
    const fresh = this.#fresh;
    const aborts = this.#aborts;
    if (fresh.length > 0) {
      this.#fresh = [];
      for (const item of fresh) this.#dispatch(item);
    }
    if (aborts.length > 0) {
      this.#aborts = [];
      for (const [exchange, reason] of aborts) this.#abort(exchange, abortError(reason));
    }
  }

  /** One kernel → JS record; the payload is valid only during this call. */
  #record(data: Uint8Array, offset: number, length: number, tag: number): void {
    const words = this.#readWords;
    const id = words[offset >> 2];
    const word = words[(offset >> 2) + 1];
    switch (tag) {
      case KREPIS_HTTP_TO_JS_REQUEST:
        this.#request(id, word, data.subarray(offset + 8, offset + length));
        return;
      case KREPIS_HTTP_TO_JS_BODY:
        this.#body(id, word, data, offset + 8, length - 8);
        return;
      case KREPIS_HTTP_TO_JS_CREDIT: {
        const exchange = this.#exchanges.get(id);
        if (exchange === undefined) return;
        exchange.window += word;
        const waiter = exchange.creditWaiter;
        if (waiter !== null) {
          exchange.creditWaiter = null;
          waiter();
        }
        return;
      }
      case KREPIS_HTTP_TO_JS_ABORT: {
        const exchange = this.#exchanges.get(id);
        if (exchange === undefined) return;
        // Later records for this id are ignored from now on (the kernel's rule).
        this.#exchanges.delete(id);
        this.#aborts.push([exchange, word]);
        return;
      }
    }
  }

  /**
   * Parses a REQUEST record (see docs/http.md) into a `Request`. Text is
   * read as a byte string (each byte one code unit, as `Deno.serve` gives
   * header values), decoded once into a string (no copy of the bytes: their
   * ring space is reused after this drain). A bodyless request is built
   * lazily: its URL, headers and `info.context` only exist if someone reads
   * them.
   */
  #request(id: number, flags: number, payload: Uint8Array): void {
    // ASCII (the kernel says so) decodes fastest as UTF-8; anything else byte by byte.
    const text = (flags & KREPIS_HTTP_FLAG_ASCII) !== 0
      ? asciiDecoder.decode(payload)
      : byteString(payload, 0, payload.length);
    const ends = lineEnds(text, 6);
    const requestLineEnd = ends[0];
    let space = text.indexOf(" ");
    if (space < 0 || space > requestLineEnd) space = requestLineEnd;
    const method = text.slice(0, space);
    let target = text.slice(space + 1, requestLineEnd);
    // The authority only: a Host like "a/admin?" must not move the path the
    // handler sees away from the one the kernel routed (then: 400).
    const rawHost = text.slice(ends[0] + 2, ends[1]) || this.#fallbackHost;
    let host: string | null = rawHost;
    if (rawHost !== this.#validHost) {
      if (isAuthority(rawHost)) this.#validHost = rawHost;
      else host = null;
    }
    const info = new RequestInfo(text, ends, (flags & KREPIS_HTTP_FLAG_HTTP2) !== 0);
    const hasBody = (flags & KREPIS_HTTP_FLAG_HAS_BODY) !== 0;
    // GET and HEAD cannot carry a body in a Request: such a body is discarded.
    const bodyAllowed = hasBody && method !== "GET" && method !== "HEAD";
    const exchange = new Exchange(id, method === "HEAD");
    this.#exchanges.set(id, exchange);
    let body: ReadableStream<Uint8Array> | null = null;
    if (bodyAllowed) {
      exchange.bodyEnded = false;
      exchange.chunks = [];
      body = new ReadableStream({
        type: "bytes",
        start: (controller) => {
          exchange.controller = controller;
        },
        pull: () => this.#pull(exchange),
        cancel: () => this.#discardBody(exchange),
      });
    } else if (hasBody) {
      exchange.bodyEnded = false;
    }
    if (!target.startsWith("/") && !/^https?:\/\//i.test(target)) target = "/" + target;
    const headersStart = ends[5] + 2;
    let request: HttpRequest | null = null;
    try {
      if (host === null) throw new TypeError("invalid Host");
      const url = target.charCodeAt(0) === 47 /* / */ ? "http://" + host + target : target;
      if (body === null && LAZY_REQUESTS && KNOWN_METHODS.has(method)) {
        request = lazyRequest(HttpRequest, method, {
          url: () => url,
          headerList: () => headerList(text, headersStart),
        });
      } else {
        const headers = headerList(text, headersStart);
        // GET is the default: naming it costs ~1.4 µs of method normalization.
        request = new HttpRequest(
          url,
          method === "GET" ? { headers, body } : { method, headers, body },
        );
      }
      request._exchange = exchange;
    } catch {
      // An invalid method, URL or header: the client gets 400 (below).
      if (body !== null) this.#discardBody(exchange);
    }
    this.#fresh.push({ exchange, request, info });
  }

  /** A BODY record: copied out of the ring (its space is freed by this drain). */
  #body(id: number, flags: number, data: Uint8Array, start: number, length: number): void {
    const exchange = this.#exchanges.get(id);
    const last = (flags & KREPIS_HTTP_FLAG_END) !== 0;
    if (exchange === undefined || exchange.bodyEnded) {
      // A request already answered or given up: let the kernel move on.
      if (length > 0) this.#credit(id, length);
      return;
    }
    if (last) exchange.bodyEnded = true;
    if (exchange.chunks === null) {
      if (length > 0) this.#credit(id, length);
      return;
    }
    if (length > 0) exchange.chunks.push(data.slice(start, start + length));
    if (exchange.pulling) this.#pull(exchange);
    else if (last && exchange.chunks.length === 0) this.#closeBody(exchange);
  }

  /** The consumer wants data: hand over what arrived (and credit it). */
  #pull(exchange: Exchange): void {
    const controller = exchange.controller;
    const chunks = exchange.chunks;
    if (controller === null || chunks === null) return;
    if (chunks.length > 0) {
      exchange.pulling = false;
      const chunk = chunks.shift()!;
      // Read the length first: a bytes stream transfers (detaches) the chunk.
      const length = chunk.length;
      controller.enqueue(chunk);
      if (!exchange.over) this.#credit(exchange.id, length);
      if (chunks.length === 0 && exchange.bodyEnded) this.#closeBody(exchange);
      return;
    }
    if (exchange.bodyEnded) this.#closeBody(exchange);
    else exchange.pulling = true;
  }

  #closeBody(exchange: Exchange): void {
    const controller = exchange.controller;
    exchange.controller = null;
    exchange.chunks = null;
    exchange.pulling = false;
    try {
      controller?.close();
      // A pending BYOB read must be answered after close (bytes streams only).
      controller?.byobRequest?.respond(0);
    } catch { /* already closed or errored */ }
  }

  /** Stops delivering the request body: what arrives is credited and dropped. */
  #discardBody(exchange: Exchange, error?: Error): void {
    const chunks = exchange.chunks;
    const controller = exchange.controller;
    exchange.chunks = null;
    exchange.controller = null;
    exchange.pulling = false;
    if (chunks !== null && !exchange.over) {
      let bytes = 0;
      for (const chunk of chunks) bytes += chunk.length;
      if (bytes > 0) this.#credit(exchange.id, bytes);
    }
    if (error !== undefined && controller !== null) {
      try {
        controller.error(error);
      } catch { /* already closed */ }
    }
  }

  #dispatch({ exchange, request, info }: Fresh): void {
    if (request === null) {
      this.#respondStatic(exchange, 400, BAD_REQUEST_BODY);
      return;
    }
    const handler = this.#handler;
    if (handler === null) {
      // The kernel only hands over requests when a handler exists.
      this.#respondStatic(exchange, 404, EMPTY);
      return;
    }
    let result: Response | Promise<Response>;
    try {
      result = handler(request, info);
    } catch (error) {
      this.#failed(exchange, error);
      return;
    }
    if (result instanceof Response) {
      this.#respond(exchange, result);
    } else if (result !== null && typeof (result as Promise<Response>)?.then === "function") {
      (result as Promise<Response>).then(
        (response) => this.#respond(exchange, response),
        (error) => this.#failed(exchange, error),
      );
    } else {
      this.#failed(exchange, new TypeError("the handler did not return a Response"));
    }
  }

  /** The handler failed before a head went out: `onError`'s response, else a 500. */
  #failed(exchange: Exchange, error: unknown): void {
    if (exchange.over) return;
    const onError = this.#onError;
    if (onError === null) {
      this.#respondStatic(exchange, 500, INTERNAL_ERROR_BODY);
      return;
    }
    const fallback = () => this.#respondStatic(exchange, 500, INTERNAL_ERROR_BODY);
    try {
      const result = onError(error);
      if (result instanceof Response) {
        this.#respond(exchange, result, fallback);
      } else if (result !== null && typeof (result as Promise<Response>)?.then === "function") {
        (result as Promise<Response>).then(
          (response) => this.#respond(exchange, response, fallback),
          fallback,
        );
      } else {
        fallback();
      }
    } catch {
      fallback();
    }
  }

  #respondStatic(exchange: Exchange, status: number, body: Uint8Array): void {
    if (exchange.over) return;
    this.#respondComplete(
      exchange,
      status,
      `content-type: text/plain;charset=UTF-8\r\ncontent-length: ${body.length}\r\n`,
      exchange.head ? EMPTY : body,
    );
  }

  /**
   * Sends a complete response in one record: head and (within the credit
   * window) the whole body (bytes, or an ASCII string).
   */
  #respondComplete(
    exchange: Exchange,
    status: number,
    lines: string,
    body: Uint8Array | string,
  ): void {
    if (exchange.abortReason === null) {
      const flags = body.length === 0
        ? KREPIS_HTTP_FLAG_END
        : KREPIS_HTTP_FLAG_END | KREPIS_HTTP_FLAG_INLINE_BODY;
      this.#records.putResponse(exchange.id, status, flags, lines, body);
      exchange.window -= body.length;
    }
    this.#complete(exchange);
  }

  /** Sends a handler's response: head, then the body within the credit window. */
  #respond(exchange: Exchange, response: unknown, onInvalid?: () => void): void {
    if (exchange.over) return;
    const parts = response instanceof Response ? responseParts(response) : null;
    if (parts !== null) {
      this.#respondWhole(exchange, parts);
      return;
    }
    if (!(response instanceof Response) || response.bodyUsed) {
      if (onInvalid !== undefined) onInvalid();
      else {
        this.#failed(
          exchange,
          new TypeError(
            response instanceof Response
              ? "the handler returned a Response whose body was already used"
              : "the handler did not return a Response",
          ),
        );
      }
      return;
    }
    const status = response.status;
    let lines = "";
    let hasLength = false;
    for (const [name, value] of response.headers) {
      if (name === "content-length") hasLength = true;
      lines += name + ": " + value + "\r\n";
    }
    const body = response.body;
    if (body === null || exchange.head || isBodyless(status)) {
      if (body !== null) body.cancel().catch(() => {});
      if (!hasLength && !exchange.head && !isBodyless(status)) lines += "content-length: 0\r\n";
      this.#writeHead(exchange, status, lines, true);
      this.#complete(exchange);
      return;
    }
    void this.#sendBody(exchange, status, lines, hasLength, body);
  }

  /**
   * A response whose status, headers and whole body were read without a
   * `Headers` object or a stream (`responseParts`): the common shapes (a
   * string, JSON, bytes or no body) leave in one head and at most one body
   * record, without a promise when the body fits the credit window.
   */
  #respondWhole(exchange: Exchange, { status, headers, body }: ResponseParts): void {
    let lines = "";
    let hasLength = false;
    for (let index = 0; index < headers.length; index++) {
      const name = headers[index][0].toLowerCase();
      if (name === "content-length") hasLength = true;
      lines += name + ": " + headers[index][1] + "\r\n";
    }
    if (body === null || exchange.head || isBodyless(status)) {
      if (!hasLength && !exchange.head && !isBodyless(status)) lines += "content-length: 0\r\n";
      this.#respondComplete(exchange, status, lines, EMPTY);
      return;
    }
    // An ASCII string goes into the ring as it is; anything else is encoded first.
    const bytes = typeof body === "string" && !isAscii(body) ? encoder.encode(body) : body;
    if (!hasLength) lines += `content-length: ${bytes.length}\r\n`;
    if (bytes.length <= exchange.window) {
      // The common case: one record, no promise.
      this.#respondComplete(exchange, status, lines, bytes);
      return;
    }
    this.#writeHead(exchange, status, lines, false);
    const whole = typeof bytes === "string" ? encoder.encode(bytes) : bytes;
    void this.#sendChunk(exchange, whole, true).then((sent) => {
      if (sent) this.#complete(exchange);
    });
  }

  async #sendBody(
    exchange: Exchange,
    status: number,
    lines: string,
    hasLength: boolean,
    body: ReadableStream<Uint8Array>,
  ): Promise<void> {
    const reader = body.getReader();
    exchange.responseReader = reader;
    let headSent = false;
    try {
      const first = await reader.read();
      if (exchange.over) {
        reader.cancel(exchange.abortReason ?? undefined).catch(() => {});
        return;
      }
      if (first.done) {
        if (!hasLength) lines += "content-length: 0\r\n";
        this.#writeHead(exchange, status, lines, true);
        this.#complete(exchange);
        return;
      }
      let chunk = toBytes(first.value);
      // A body that is already complete (a string, bytes, a closed stream)
      // has its next read settled at once: it goes out with a content-length
      // in one batch. A live stream sends its head and first chunk now.
      const next = reader.read();
      const settled = await Promise.race([next, NOT_YET]);
      if (exchange.over) {
        reader.cancel(exchange.abortReason ?? undefined).catch(() => {});
        return;
      }
      if (settled !== NOT_YET_VALUE && (settled as ReadableStreamReadResult<Uint8Array>).done) {
        if (!hasLength) lines += `content-length: ${chunk.length}\r\n`;
        this.#writeHead(exchange, status, lines, false);
        headSent = true;
        if (await this.#sendChunk(exchange, chunk, true)) this.#complete(exchange);
        return;
      }
      this.#writeHead(exchange, status, lines, false);
      headSent = true;
      let pending: Promise<ReadableStreamReadResult<Uint8Array>> = next;
      while (true) {
        if (!(await this.#sendChunk(exchange, chunk, false))) {
          reader.cancel(exchange.abortReason ?? undefined).catch(() => {});
          return;
        }
        const result = await pending;
        if (exchange.over) {
          reader.cancel(exchange.abortReason ?? undefined).catch(() => {});
          return;
        }
        if (result.done) break;
        chunk = toBytes(result.value);
        pending = reader.read();
      }
      if (await this.#sendChunk(exchange, EMPTY, true)) this.#complete(exchange);
    } catch (error) {
      if (exchange.over) return;
      if (!headSent) {
        this.#failed(exchange, error);
        return;
      }
      // The head is out: the kernel aborts the response (HTTP/1 closes the
      // connection, HTTP/2 resets the stream).
      this.#put(KREPIS_HTTP_TO_KERNEL_ABORT, exchange, 0, EMPTY);
      this.#complete(exchange);
    }
  }

  /**
   * Writes `bytes` as RESPONSE_BODY records within the credit window,
   * waiting for CREDIT records as needed. False when the exchange ended.
   */
  async #sendChunk(exchange: Exchange, bytes: Uint8Array, last: boolean): Promise<boolean> {
    if (bytes.length === 0) {
      if (!last) return !exchange.over;
      if (exchange.over) return false;
      this.#put(KREPIS_HTTP_TO_KERNEL_BODY, exchange, KREPIS_HTTP_FLAG_END, EMPTY);
      return true;
    }
    let offset = 0;
    while (offset < bytes.length) {
      if (exchange.over) return false;
      const take = Math.min(exchange.window, bytes.length - offset);
      if (take <= 0) {
        await new Promise<void>((resolve) => exchange.creditWaiter = resolve);
        continue;
      }
      const end = offset + take;
      const flags = last && end === bytes.length ? KREPIS_HTTP_FLAG_END : 0;
      this.#put(KREPIS_HTTP_TO_KERNEL_BODY, exchange, flags, bytes.subarray(offset, end));
      exchange.window -= take;
      offset = end;
    }
    return true;
  }

  /** Sends a response head (its body, if any, follows in BODY records). */
  #writeHead(exchange: Exchange, status: number, lines: string, complete: boolean): void {
    if (exchange.abortReason !== null) return;
    this.#records.putResponse(
      exchange.id,
      status,
      complete ? KREPIS_HTTP_FLAG_END : 0,
      lines,
      EMPTY,
    );
  }

  /** The response went out completely: forget the exchange, drop an unread body. */
  #complete(exchange: Exchange): void {
    if (exchange.over) return;
    exchange.over = true;
    if (this.#exchanges.get(exchange.id) === exchange) this.#exchanges.delete(exchange.id);
    exchange.responseReader = null;
    if (exchange.controller !== null || exchange.chunks !== null) {
      this.#discardBody(
        exchange,
        new ClosedError("http: the response was sent before the request body was read"),
      );
    }
  }

  /** The kernel ended the exchange (or the server stopped): wake and fail everything of it. */
  #abort(exchange: Exchange, error: Error): void {
    exchange.abortReason = error;
    exchange.over = true;
    this.#discardBody(exchange, error);
    const waiter = exchange.creditWaiter;
    exchange.creditWaiter = null;
    waiter?.();
    // A stream waiting for its next chunk (a long poll, server-sent events)
    // learns now, not when it produces one.
    exchange.responseReader?.cancel(error).catch(() => {});
    exchange.responseReader = null;
    try {
      exchange.signalController?.abort(error);
    } catch { /* a listener threw: it must not stop the pump */ }
  }

  #credit(id: number, bytes: number): void {
    this.#records.put(KREPIS_HTTP_TO_KERNEL_CREDIT, id, bytes, 0, 2, EMPTY);
  }

  /** Writes (or queues) a BODY or ABORT record of `exchange`. */
  #put(tag: number, exchange: Exchange, word1: number, payload: Uint8Array): void {
    if (exchange.abortReason !== null) return;
    this.#records.put(tag, exchange.id, word1, 0, 2, payload);
  }

  /** The kernel stopped the server (or closed): fail what is still open. */
  #stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#records.stop();
    const error = abortError(KREPIS_HTTP_ABORT_STOPPING);
    const open = [...this.#exchanges.values()];
    this.#exchanges.clear();
    for (const [exchange] of this.#aborts) open.push(exchange);
    this.#aborts = [];
    for (const exchange of open) this.#abort(exchange, error);
  }
}

const NOT_YET_VALUE = Symbol("not yet");
/** Settles after anything already settled: `race([read, NOT_YET])` tells a finished read. */
const NOT_YET: Promise<typeof NOT_YET_VALUE> = Promise.resolve(NOT_YET_VALUE);

function toBytes(chunk: unknown): Uint8Array {
  if (chunk instanceof Uint8Array) return chunk;
  if (ArrayBuffer.isView(chunk)) {
    return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  if (typeof chunk === "string") return encoder.encode(chunk);
  throw new TypeError("a response body chunk must be a Uint8Array");
}
