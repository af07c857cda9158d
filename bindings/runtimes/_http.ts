/**
 * HTTP requests and responses as runtime payloads (flag `FLAG_HTTP`), shared
 * by the pool and the child module: a u32 (little-endian) head length, the
 * head as JSON (method, URL and header pairs; or status and header pairs),
 * then the body bytes.
 *
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The head of an HTTP request as a runtime receives it. */
export interface HttpRequestHead {
  method: string;
  url: string;
  headers: [string, string][];
}

/** The head of an HTTP response as a runtime sends it. */
export interface HttpResponseHead {
  status: number;
  headers: [string, string][];
}

/** Head and body in one payload. */
export function encodeHttp(head: HttpRequestHead | HttpResponseHead, body: Uint8Array): Uint8Array {
  const json = encoder.encode(JSON.stringify(head));
  const out = new Uint8Array(4 + json.length + body.length);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 4);
  out.set(body, 4 + json.length);
  return out;
}

/** Splits a payload into its head (parsed JSON) and body; throws on a malformed one. */
export function decodeHttp<T>(payload: Uint8Array): { head: T; body: Uint8Array } {
  if (payload.length < 4) throw new TypeError("an HTTP payload needs a 4-byte head length");
  const length = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true);
  if (4 + length > payload.length) throw new TypeError("the HTTP head is longer than the payload");
  const head = JSON.parse(decoder.decode(payload.subarray(4, 4 + length))) as T;
  return { head, body: payload.subarray(4 + length) };
}
