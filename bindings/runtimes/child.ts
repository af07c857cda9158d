/**
 * The child side of `kernel.runtimes`: what a module run by a runtime pool
 * imports to receive requests, reply and send messages to its parent. Pure
 * TypeScript (no FFI): the channel is the process's stdin and stdout, in
 * frames the parent's kernel checks (docs/runtimes.md). `serve()` moves
 * `console.log`, `info` and `debug` to stderr, since stdout carries frames.
 *
 * @example
 * ```ts ignore
 * import { send, serve } from "@krepis/sdk/runtime";
 * serve({
 *   request: ({ body, ctx }) => `job ${new TextDecoder().decode(body)} for ${ctx?.tenantId}`,
 *   http: (request) => new Response(`hello from ${Deno.pid}: ${new URL(request.url).pathname}`),
 * });
 * send("warmed up");
 * ```
 *
 * @module
 */

import {
  FLAG_HTTP,
  FRAME_HEADER_BYTES,
  FrameKind,
  frameProblem,
  readFrameHeader,
  writeFrameHeader,
} from "./_frame.ts";
import { decodeHttp, encodeHttp, type HttpRequestHead } from "./_http.ts";

/** The caller's context as a request carries it (the parent's `ctx`). */
export interface RuntimeRequestContext {
  /** Unique id of the request. */
  readonly requestId: string;
  /** The tenant the request acts for, or `null`. */
  readonly tenantId: string | null;
  /** Distributed trace id, or `null`. */
  readonly traceId: string | null;
  /** 0 (lowest) – 255 (highest). */
  readonly priority: number;
  /** Absolute deadline in Unix epoch milliseconds, or `null`. */
  readonly deadline: number | null;
}

/** One request from the parent. */
export interface RuntimeRequest {
  /** The request's bytes. */
  readonly body: Uint8Array;
  /** The caller's context, or `null` when it gave none. */
  readonly ctx: RuntimeRequestContext | null;
}

/** What a runtime answers. */
export interface RuntimeHandlers {
  /** Answers `pool.request()`; a thrown error fails that request (its message goes back). */
  request?: (request: RuntimeRequest) => Uint8Array | string | Promise<Uint8Array | string>;
  /** Answers HTTP requests of a server whose handler is the pool. */
  http?: (request: Request, info: { ctx: RuntimeRequestContext | null }) =>
    | Response
    | Promise<Response>;
}

/** Options of {@linkcode serve}. */
export interface ServeOptions {
  /** Exit once the parent closed the channel and every request was answered (default true). */
  exitOnClose?: boolean;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** Largest request the parent may send (it checks too); from its maxMessageBytes. */
const maxPayload = Number(Deno.env.get("KREPIS_RUNTIME_MAX_MESSAGE_BYTES") ?? 1 << 20);

let queued: Uint8Array[] = [];
let flushScheduled = false;
let writing: Promise<void> = Promise.resolve();
let serving = false;

async function writeAll(bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await Deno.stdout.write(bytes.subarray(written));
}

/** Frames written in one turn go out in one write. */
function flush(): void {
  flushScheduled = false;
  const frames = queued;
  queued = [];
  let total = 0;
  for (const frame of frames) total += frame.length;
  const batch = frames.length === 1 ? frames[0] : new Uint8Array(total);
  if (frames.length > 1) {
    let at = 0;
    for (const frame of frames) {
      batch.set(frame, at);
      at += frame.length;
    }
  }
  writing = writing.then(() => writeAll(batch)).catch(() => {
    // The parent is gone: nothing to answer to.
    Deno.exit(1);
  });
}

function emit(kind: number, id: number, payload: Uint8Array, flags = 0): void {
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  writeFrameHeader(frame, 0, { kind, id, flags, length: payload.length });
  frame.set(payload, FRAME_HEADER_BYTES);
  queued.push(frame);
  if (!flushScheduled) {
    flushScheduled = true;
    queueMicrotask(flush);
  }
}

function bytesOf(value: Uint8Array | string): Uint8Array {
  return typeof value === "string" ? encoder.encode(value) : value;
}

/**
 * Sends a message to the parent (its pool's `events()` yields it as a
 * `message` event).
 *
 * @example
 * ```ts ignore
 * import { send } from "@krepis/sdk/runtime";
 * send(JSON.stringify({ progress: 0.5 }));
 * ```
 */
export function send(message: Uint8Array | string): void {
  const bytes = bytesOf(message);
  if (bytes.length > maxPayload) {
    throw new RangeError(
      `a message of ${bytes.length} bytes exceeds maxMessageBytes (${maxPayload})`,
    );
  }
  emit(FrameKind.message, 0, bytes);
}

async function answer(
  handlers: RuntimeHandlers,
  id: number,
  flags: number,
  payload: Uint8Array,
  ctx: RuntimeRequestContext | null,
): Promise<void> {
  try {
    if ((flags & FLAG_HTTP) !== 0) {
      if (handlers.http === undefined) {
        throw new Error("this runtime serves no HTTP (no http handler)");
      }
      const { head, body } = decodeHttp<HttpRequestHead>(payload);
      const hasBody = head.method !== "GET" && head.method !== "HEAD";
      const request = new Request(head.url, {
        method: head.method,
        headers: head.headers,
        body: hasBody ? body.slice() : undefined,
      });
      const response = await handlers.http(request, { ctx });
      const bytes = new Uint8Array(await response.arrayBuffer());
      const reply = encodeHttp({ status: response.status, headers: [...response.headers] }, bytes);
      checkSize(reply);
      emit(FrameKind.reply, id, reply, FLAG_HTTP);
      return;
    }
    if (handlers.request === undefined) throw new Error("this runtime serves no requests");
    const reply = bytesOf(await handlers.request({ body: payload, ctx }));
    checkSize(reply);
    emit(FrameKind.reply, id, reply);
  } catch (error) {
    const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    emit(FrameKind.fail, id, encoder.encode(message.slice(0, 4096)));
  }
}

function checkSize(reply: Uint8Array): void {
  if (reply.length > maxPayload) {
    throw new RangeError(
      `a reply of ${reply.length} bytes exceeds maxMessageBytes (${maxPayload})`,
    );
  }
}

function redirectConsole(): void {
  const toStderr = (...args: unknown[]) => console.error(...args);
  console.log = toStderr;
  console.info = toStderr;
  console.debug = toStderr;
}

/**
 * Serves the parent's requests until it closes the channel: announces the
 * runtime ready, answers pings (health checks) from the event loop, and runs
 * handlers concurrently. Resolves once the channel closed and every request
 * was answered; then exits the process unless `exitOnClose` is false.
 *
 * @example
 * ```ts ignore
 * import { serve } from "@krepis/sdk/runtime";
 * await serve({ request: ({ body }) => body.toReversed() });
 * ```
 */
export async function serve(handlers: RuntimeHandlers, options: ServeOptions = {}): Promise<void> {
  if (serving) throw new Error("serve() runs once per runtime");
  serving = true;
  redirectConsole();
  emit(FrameKind.ready, 0, new Uint8Array());
  const inFlight = new Set<Promise<void>>();
  let buffer = new Uint8Array(64 * 1024);
  let start = 0;
  let end = 0;
  for (;;) {
    if (end === buffer.length) {
      // Make room: move what is left to the front, grow for a large frame.
      const left = end - start;
      const header = left >= FRAME_HEADER_BYTES ? readFrameHeader(buffer, start) : null;
      const need = header === null ? FRAME_HEADER_BYTES : FRAME_HEADER_BYTES + header.length;
      const next = need > buffer.length
        ? new Uint8Array(Math.max(need, buffer.length * 2))
        : buffer;
      next.set(buffer.subarray(start, end), 0);
      buffer = next;
      start = 0;
      end = left;
    }
    const read = await Deno.stdin.read(buffer.subarray(end));
    if (read === null) break;
    end += read;
    while (end - start >= FRAME_HEADER_BYTES) {
      const problem = frameProblem(buffer, start, maxPayload);
      if (problem !== null) {
        console.error(`@krepis/sdk/runtime: refused a frame from the parent (${problem})`);
        Deno.exit(70);
      }
      const header = readFrameHeader(buffer, start);
      const total = FRAME_HEADER_BYTES + header.length;
      if (end - start < total) break;
      const payloadAt = start + FRAME_HEADER_BYTES;
      if (header.kind === FrameKind.ping) {
        emit(FrameKind.pong, header.id, new Uint8Array());
      } else {
        const ctx = header.contextLength === 0 ? null : JSON.parse(
          decoder.decode(buffer.subarray(payloadAt, payloadAt + header.contextLength)),
        ) as RuntimeRequestContext;
        const body = buffer.slice(payloadAt + header.contextLength, start + total);
        const done = answer(handlers, header.id, header.flags, body, ctx);
        inFlight.add(done);
        void done.finally(() => inFlight.delete(done));
      }
      start += total;
    }
    if (start === end) start = end = 0;
  }
  await Promise.all(inFlight);
  flush();
  await writing;
  if (options.exitOnClose !== false) Deno.exit(0);
}
