/**
 * One request/response exchange of the HTTP bridge: its state (credit
 * window, request body, abort), the `Request` subclass handlers get, and the
 * errors an exchange ends with when the kernel aborts it.
 *
 * @module
 */

import {
  KREPIS_HTTP_ABORT_CLIENT_GONE,
  KREPIS_HTTP_ABORT_STOPPING,
  KREPIS_HTTP_ABORT_TIMEOUT,
  KREPIS_HTTP_ABORT_TOO_LARGE,
  KREPIS_HTTP_BODY_WINDOW,
} from "../_gen/symbols.ts";
import { ClosedError, ConnectionError } from "../errors.ts";

const WINDOW = KREPIS_HTTP_BODY_WINDOW;

const ABORT_REASONS: Record<number, [string, string]> = {
  [KREPIS_HTTP_ABORT_CLIENT_GONE]: ["client_gone", "the client went away"],
  [KREPIS_HTTP_ABORT_TIMEOUT]: ["timeout", "the client was too slow (bodyTimeoutMs)"],
  [KREPIS_HTTP_ABORT_TOO_LARGE]: [
    "too_large",
    "the request body exceeded maxBodyBytes (the client got 413)",
  ],
  [KREPIS_HTTP_ABORT_STOPPING]: ["stopping", "the server is stopping"],
};

/** The error an exchange the kernel aborted for `reason` ends with. */
export function abortError(reason: number): Error {
  const [code, message] = ABORT_REASONS[reason] ?? ["unknown", `aborted (reason ${reason})`];
  if (reason === KREPIS_HTTP_ABORT_STOPPING) {
    return new ClosedError(`http: ${message}`, { details: { reason: code } });
  }
  return new ConnectionError(`http: ${message}`, { details: { reason: code } });
}

/**
 * The `Request` handed to handlers. Its `signal` is created on first use
 * (following an external signal costs ~3.5 µs per request in Deno 2.9, a
 * third of the JS budget of a hello-world request) and aborts when the kernel
 * reports the exchange over (client gone, timeout, shutdown). Bodyless
 * requests are built lazily (`_deno_fast.ts`); `_exchange` is set right after
 * construction.
 */
export class HttpRequest extends Request {
  declare _exchange: Exchange;
}
const requestSignal = Object.getOwnPropertyDescriptor(Request.prototype, "signal")!.get!;
Object.defineProperty(HttpRequest.prototype, "signal", {
  configurable: true,
  enumerable: true,
  get(this: Request): AbortSignal {
    const exchange = (this as HttpRequest)._exchange;
    if (exchange === undefined) return requestSignal.call(this);
    if (exchange.signalController === null) {
      exchange.signalController = new AbortController();
      if (exchange.abortReason !== null) exchange.signalController.abort(exchange.abortReason);
    }
    return exchange.signalController.signal;
  },
});

/** One request/response exchange in flight. */
export class Exchange {
  readonly id: number;
  readonly head: boolean;
  /** Response body bytes JS may still send before the kernel credits more. */
  window = WINDOW;
  creditWaiter: (() => void) | null = null;
  /** Set once the kernel aborted the exchange or the server stopped. */
  abortReason: Error | null = null;
  /** Set once the response was completely written (or aborted). */
  over = false;
  signalController: AbortController | null = null;
  /** The response body being sent (cancelled at once when the exchange is aborted). */
  responseReader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  // Request body (null controller: no body, or the body is being discarded).
  controller: ReadableByteStreamController | null = null;
  chunks: Uint8Array[] | null = null;
  bodyEnded = true;
  pulling = false;

  constructor(id: number, head: boolean) {
    this.id = id;
    this.head = head;
  }
}
