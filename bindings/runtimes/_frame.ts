/**
 * The runtime channel's frame (docs/runtimes.md), shared by the pool and
 * the child module: a KNUL v1 header (40 bytes) plus the channel header
 * (correlation id, context length), then the payload. Pure TypeScript: the
 * child imports it without FFI. The constants come from the kernel's ABI
 * header, which checks every frame a child writes.
 *
 * @module
 */

import {
  KREPIS_KNUL_VERSION,
  KREPIS_RUNTIME_FLAG_HTTP,
  KREPIS_RUNTIME_FRAME_HEADER_BYTES,
  KREPIS_RUNTIME_KIND_FAIL,
  KREPIS_RUNTIME_KIND_MESSAGE,
  KREPIS_RUNTIME_KIND_PING,
  KREPIS_RUNTIME_KIND_PONG,
  KREPIS_RUNTIME_KIND_READY,
  KREPIS_RUNTIME_KIND_REPLY,
  KREPIS_RUNTIME_KIND_REQUEST,
  KREPIS_RUNTIME_RECORD_FRAME,
  KREPIS_RUNTIME_RECORD_PROTOCOL_ERROR,
} from "../_gen/symbols.ts";

/** Bytes of a frame header. */
export const FRAME_HEADER_BYTES: number = KREPIS_RUNTIME_FRAME_HEADER_BYTES;

/** Frame kinds. */
export const FrameKind = {
  request: KREPIS_RUNTIME_KIND_REQUEST,
  reply: KREPIS_RUNTIME_KIND_REPLY,
  fail: KREPIS_RUNTIME_KIND_FAIL,
  message: KREPIS_RUNTIME_KIND_MESSAGE,
  ready: KREPIS_RUNTIME_KIND_READY,
  ping: KREPIS_RUNTIME_KIND_PING,
  pong: KREPIS_RUNTIME_KIND_PONG,
} as const;

/** Flag: the payload is an HTTP request or response. */
export const FLAG_HTTP: number = KREPIS_RUNTIME_FLAG_HTTP;
/** Ring record tags of the kernel → JS ring. */
export const RECORD_FRAME: number = KREPIS_RUNTIME_RECORD_FRAME;
/** The last record before the ring closes: the child broke the protocol. */
export const RECORD_PROTOCOL_ERROR: number = KREPIS_RUNTIME_RECORD_PROTOCOL_ERROR;

/** Priority of a frame without a context. */
const NORMAL_PRIORITY = 128;

/** A frame header's fields. */
export interface FrameHeader {
  kind: number;
  flags: number;
  priority: number;
  /** Payload bytes after the header (context included). */
  length: number;
  id: number;
  /** Bytes of context JSON at the start of the payload. */
  contextLength: number;
}

function u32(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = value;
  bytes[at + 1] = value >>> 8;
  bytes[at + 2] = value >>> 16;
  bytes[at + 3] = value >>> 24;
}

function readU32(bytes: Uint8Array, at: number): number {
  return (bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24)) >>> 0;
}

/**
 * Writes a header at `bytes[at]`. `context` is the tenant hash (8 bytes,
 * little-endian) and trace id (16 bytes) as KNUL carries them, or null.
 */
export function writeFrameHeader(
  bytes: Uint8Array,
  at: number,
  header: Partial<FrameHeader> & { kind: number; length: number },
  context: Uint8Array | null = null,
): void {
  bytes[at] = 0x4b; // "KNUL"
  bytes[at + 1] = 0x4e;
  bytes[at + 2] = 0x55;
  bytes[at + 3] = 0x4c;
  bytes[at + 4] = KREPIS_KNUL_VERSION;
  bytes[at + 5] = header.kind;
  bytes[at + 6] = header.flags ?? 0;
  bytes[at + 7] = (header.flags ?? 0) >>> 8;
  bytes[at + 8] = header.priority ?? NORMAL_PRIORITY;
  bytes[at + 9] = 0;
  bytes[at + 10] = 0;
  bytes[at + 11] = 0;
  u32(bytes, at + 12, header.length);
  if (context === null) bytes.fill(0, at + 16, at + 40);
  else bytes.set(context.subarray(0, 24), at + 16);
  u32(bytes, at + 40, header.id ?? 0);
  u32(bytes, at + 44, header.contextLength ?? 0);
}

/** Reads a header at `bytes[at]` (no checks: see {@linkcode frameProblem}). */
export function readFrameHeader(bytes: Uint8Array, at: number): FrameHeader {
  return {
    kind: bytes[at + 5],
    flags: bytes[at + 6] | (bytes[at + 7] << 8),
    priority: bytes[at + 8],
    length: readU32(bytes, at + 12),
    id: readU32(bytes, at + 40),
    contextLength: readU32(bytes, at + 44),
  };
}

/**
 * What is wrong with the header at `bytes[at]` as a frame from the parent
 * (the child's check), or null.
 */
export function frameProblem(bytes: Uint8Array, at: number, maxPayload: number): string | null {
  if (
    bytes[at] !== 0x4b || bytes[at + 1] !== 0x4e || bytes[at + 2] !== 0x55 || bytes[at + 3] !== 0x4c
  ) {
    return "magic: a frame must start with KNUL";
  }
  if (bytes[at + 4] !== KREPIS_KNUL_VERSION) return `version: ${bytes[at + 4]}`;
  const header = readFrameHeader(bytes, at);
  if (header.kind !== FrameKind.request && header.kind !== FrameKind.ping) {
    return `kind: ${header.kind} may not come from the parent`;
  }
  if ((header.flags & ~FLAG_HTTP) !== 0) return `flags: ${header.flags}`;
  if (header.length > maxPayload) return `too_large: ${header.length} bytes`;
  if (header.contextLength > header.length) return "context_length: longer than the payload";
  return null;
}
