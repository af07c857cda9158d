/**
 * The shortcuts `Deno.serve` itself takes with `Request` and `Response`
 * objects, for the HTTP bridge (feature-detected: on a Deno whose internals
 * differ, every request and response takes the standard path instead).
 *
 * - A `Request` built from its parts: `new Request(url, init)` parses the
 *   URL and validates every header at once (~2.8 µs for the URL alone);
 *   `Deno.serve` builds a branded `Request` over an inner request whose URL
 *   and header list are computed when first read. The same inner shape is
 *   used here: the URL, the header list and its `Headers` only exist if the
 *   handler asks for them.
 * - A `Response`'s parts without its `Headers` object or a body stream:
 *   `Deno.serve` reads the status, header list and a static body (a string
 *   or bytes) from the response's inner state; iterating `response.headers`
 *   materializes a `Headers` object and a body is otherwise read through a
 *   stream.
 *
 * @module
 */

/** The internal slot of an object named `description` (Deno keys them by symbols). */
function slot(object: object, description: string): symbol | undefined {
  return Object.getOwnPropertySymbols(object).find((symbol) => symbol.description === description);
}

const requestProbe = new Request("http://probe/");
const responseProbe = new Response("probe");
const BRAND_SLOT = slot(requestProbe, "[[webidl.brand]]");
/** The value of Deno's webidl brand: `new Request(BRAND)` makes an empty branded Request. */
const BRAND: unknown = BRAND_SLOT === undefined
  ? undefined
  : (requestProbe as unknown as Record<symbol, unknown>)[BRAND_SLOT];
const REQUEST_INNER = slot(requestProbe, "request");
const REQUEST_HEADERS_GUARD = slot(requestProbe, "headers guard");
const REQUEST_SIGNAL_CACHE = slot(requestProbe, "signalCache");
const RESPONSE_INNER = slot(responseProbe, "response");
const RESPONSE_HEADERS = slot(responseProbe, "headers");
const RESPONSE_LAZY_BODY = slot(responseProbe, "lazy static body");
const RESPONSE_LAZY_CONTENT_TYPE = slot(responseProbe, "lazy static content type");

/** What an inner request computes on demand. */
export interface LazyRequestSource {
  /** The absolute URL. */
  url(): string;
  /** The request's headers as `[name, value]` pairs. */
  headerList(): [string, string][];
}

/**
 * The inner request of a lazily built `Request`, in the shape Deno's
 * `Request` reads (`ext/fetch/23_request.js`, `newInnerRequest`).
 */
class InnerRequest {
  methodInner: string;
  headerListInner: [string, string][] | null = null;
  body: null = null;
  redirectMode = "follow";
  redirectCount = 0;
  urlListProcessed: string[] = [];
  clientRid: null = null;
  blobUrlEntry: null = null;
  readonly #source: LazyRequestSource;

  constructor(method: string, source: LazyRequestSource) {
    this.methodInner = method;
    this.#source = source;
  }

  get method(): string {
    return this.methodInner;
  }

  set method(value: string) {
    this.methodInner = value;
  }

  get headerList(): [string, string][] {
    return this.headerListInner ??= this.#source.headerList();
  }

  set headerList(value: [string, string][]) {
    this.headerListInner = value;
  }

  get urlList(): (() => string)[] {
    return [() => this.url()];
  }

  url(): string {
    return this.urlListProcessed[0] ??= this.#source.url();
  }

  currentUrl(): string {
    return this.url();
  }
}

/** True when bodyless requests can be built lazily on this Deno. */
export const LAZY_REQUESTS: boolean = (() => {
  if (
    BRAND === undefined || REQUEST_INNER === undefined || REQUEST_HEADERS_GUARD === undefined ||
    REQUEST_SIGNAL_CACHE === undefined
  ) {
    return false;
  }
  try {
    const request = lazyRequest(Request, "DELETE", {
      url: () => "http://check:8/a?b",
      headerList: () => [["x-check", "1"]],
    });
    return request instanceof Request && request.method === "DELETE" &&
      request.url === "http://check:8/a?b" && request.headers.get("X-Check") === "1" &&
      request.body === null && new Request(request).url === "http://check:8/a?b";
  } catch {
    return false;
  }
})();

/**
 * A bodyless `Request` (an instance of `type`, a `Request` subclass) whose
 * URL and headers come from `source` when first read. Only when
 * {@linkcode LAZY_REQUESTS} is true.
 */
export function lazyRequest<T extends Request>(
  type: new (input: never, init: undefined) => T,
  method: string,
  source: LazyRequestSource,
): T {
  const request = new type(BRAND as never, undefined);
  const slots = request as unknown as Record<symbol, unknown>;
  slots[REQUEST_INNER!] = new InnerRequest(method, source);
  slots[REQUEST_HEADERS_GUARD!] = "request";
  return request;
}

/** A response's status, headers and whole body, when they can be read without streams. */
export interface ResponseParts {
  status: number;
  /** `[name, value]` pairs as the handler set them (content-type included). */
  headers: [string, string][];
  /** The whole body, or null for none. */
  body: string | Uint8Array | null;
}

interface InnerResponse {
  status: number;
  headerList: [string, string][];
  body: { streamOrStatic?: { body?: unknown; consumed?: boolean } } | null;
}

/** True when response parts can be read from Deno's inner state. */
const RESPONSE_PARTS: boolean = RESPONSE_INNER !== undefined && RESPONSE_HEADERS !== undefined &&
  RESPONSE_LAZY_BODY !== undefined && RESPONSE_LAZY_CONTENT_TYPE !== undefined &&
  (() => {
    try {
      const text = responsePartsOf(new Response("ok", { headers: { "content-type": "a/b" } }));
      const json = responsePartsOf(Response.json({ a: 1 }, { status: 201 }));
      const bytes = responsePartsOf(new Response(new Uint8Array([1, 2])));
      const none = responsePartsOf(new Response(null, { status: 204 }));
      return text?.body === "ok" &&
        text.headers.some(([name, value]) => name === "content-type" && value === "a/b") &&
        json?.body === '{"a":1}' && json.status === 201 &&
        bytes?.body instanceof Uint8Array && bytes.body.length === 2 &&
        none?.body === null && none.status === 204;
    } catch {
      return false;
    }
  })();

function responsePartsOf(response: Response): ResponseParts | null {
  const slots = response as unknown as Record<symbol, unknown>;
  // A materialized Headers object is the truth: take the standard path.
  if (slots[RESPONSE_HEADERS!] !== null) return null;
  const inner = slots[RESPONSE_INNER!] as InnerResponse | undefined;
  // Status 0 (Response.error()) and 1xx take the standard path, which refuses them.
  if (inner === undefined || !Array.isArray(inner.headerList) || inner.status < 200) return null;
  const headers = inner.headerList;
  const lazy = slots[RESPONSE_LAZY_BODY!];
  if (typeof lazy === "string") {
    const contentType = slots[RESPONSE_LAZY_CONTENT_TYPE!];
    return {
      status: inner.status,
      headers: typeof contentType === "string"
        ? [...headers, ["content-type", contentType]]
        : headers,
      body: lazy,
    };
  }
  if (inner.body === null) return { status: inner.status, headers, body: null };
  const stored = inner.body.streamOrStatic;
  if (stored === undefined || stored.consumed !== false) return null;
  const body = stored.body;
  if (typeof body !== "string" && !(body instanceof Uint8Array)) return null;
  return { status: inner.status, headers, body };
}

/**
 * The parts of `response` when they can be read without a `Headers` object
 * or a stream (a string, bytes or no body, headers not touched since), else
 * null: then use the standard API.
 */
export function responseParts(response: Response): ResponseParts | null {
  return RESPONSE_PARTS ? responsePartsOf(response) : null;
}

/**
 * Marks a lazily built request's signal as already over (what Deno does
 * when a request ends before anyone asked for its signal).
 */
export const SIGNAL_CACHE: symbol | undefined = REQUEST_SIGNAL_CACHE;
