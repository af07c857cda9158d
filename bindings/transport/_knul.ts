/**
 * The KNUL packet header (docs/knul.md) in TypeScript: byte-identical to
 * `ffi/src/knul.rs`, both tested against `tests/vectors/knul_header.json`.
 *
 * Two forms share one layout and one tenant hash: {@linkcode encodeKnulHeader}
 * / {@linkcode decodeKnulHeader} (tested against the vectors) and the in-place
 * form a link uses per packet ({@linkcode writeKnulDataHeader} into its send
 * ring, {@linkcode KnulOffset} to read received headers where they lie), which
 * allocates nothing.
 *
 * @module
 */

import {
  KREPIS_FLAG_RELIABLE,
  KREPIS_KNUL_HEADER_BYTES,
  KREPIS_KNUL_VERSION,
} from "../_gen/symbols.ts";
import type { Context } from "../context.ts";
import { InvalidArgumentError } from "../errors.ts";
import { tenantHash } from "../_context.ts";

export { tenantHash };

/** Header size in bytes (from the ABI header, so Rust and TS agree). */
export const KNUL_HEADER_BYTES: number = KREPIS_KNUL_HEADER_BYTES;
/** The protocol version this codec speaks. */
export const KNUL_VERSION: number = KREPIS_KNUL_VERSION;
const MAGIC = [0x4b, 0x4e, 0x55, 0x4c]; // "KNUL"
/** The magic as the first little-endian u32 word of a header. */
const MAGIC_WORD = (MAGIC[0] | (MAGIC[1] << 8) | (MAGIC[2] << 16) | (MAGIC[3] << 24)) >>> 0;
const KNOWN_FLAGS = 0b11;

/** Byte offsets of the header's fields. */
export const KnulOffset: {
  readonly version: 4;
  readonly kind: 5;
  /** u16, little-endian. */
  readonly flags: 6;
  readonly priority: 8;
  /** Three zero bytes. */
  readonly reserved: 9;
  /** u32, little-endian. */
  readonly payloadLength: 12;
  /** u64, little-endian. */
  readonly tenant: 16;
  /** 16 bytes. */
  readonly traceId: 24;
} = {
  version: 4,
  kind: 5,
  flags: 6,
  priority: 8,
  reserved: 9,
  payloadLength: 12,
  tenant: 16,
  traceId: 24,
} as const;

/** Packet kinds. */
export const KnulKind = { data: 1, hello: 2, ping: 3, pong: 4, close: 5 } as const;

/** A decoded header. */
export interface KnulHeader {
  version: number;
  kind: number;
  /** Bit 0 reliable, bit 1 final. */
  flags: number;
  priority: number;
  payloadLength: number;
  /** FNV-1a 64 of the tenant id (0n = none). */
  tenant: bigint;
  traceId: Uint8Array;
}

/** Why a header was refused: the field, as in the shared vectors. */
export class KnulHeaderError extends Error {
  /** "truncated", "magic", "version", "kind", "flags", "reserved" or "too_large". */
  readonly field: string;

  constructor(field: string, message: string) {
    super(message);
    this.field = field;
    this.name = "KnulHeaderError";
  }
}

/** Writes a header's 40 bytes. */
export function encodeKnulHeader(header: KnulHeader): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(KNUL_HEADER_BYTES);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  out[KnulOffset.version] = header.version;
  out[KnulOffset.kind] = header.kind;
  view.setUint16(KnulOffset.flags, header.flags, true);
  out[KnulOffset.priority] = header.priority;
  view.setUint32(KnulOffset.payloadLength, header.payloadLength, true);
  view.setBigUint64(KnulOffset.tenant, header.tenant, true);
  out.set(header.traceId.subarray(0, 16), KnulOffset.traceId);
  return out;
}

/** Decodes and validates a header; `maxPayload` is the link's limit. */
export function decodeKnulHeader(bytes: Uint8Array, maxPayload: number): KnulHeader {
  if (bytes.length < KNUL_HEADER_BYTES) {
    throw new KnulHeaderError(
      "truncated",
      `a KNUL header is ${KNUL_HEADER_BYTES} bytes, got ${bytes.length}`,
    );
  }
  if (MAGIC.some((byte, index) => bytes[index] !== byte)) {
    throw new KnulHeaderError("magic", "not a KNUL packet (bad magic)");
  }
  const version = bytes[KnulOffset.version];
  if (version !== KNUL_VERSION) {
    throw new KnulHeaderError(
      "version",
      `KNUL version ${version} is not supported (speaks ${KNUL_VERSION})`,
    );
  }
  const kind = bytes[KnulOffset.kind];
  if (kind < KnulKind.data || kind > KnulKind.close) {
    throw new KnulHeaderError("kind", `unknown KNUL packet kind ${kind}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, KNUL_HEADER_BYTES);
  const flags = view.getUint16(KnulOffset.flags, true);
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    throw new KnulHeaderError("flags", `unknown KNUL flag bits ${flags.toString(2)}`);
  }
  const reserved = KnulOffset.reserved;
  if (bytes[reserved] !== 0 || bytes[reserved + 1] !== 0 || bytes[reserved + 2] !== 0) {
    throw new KnulHeaderError("reserved", "KNUL reserved bytes must be zero");
  }
  const payloadLength = view.getUint32(KnulOffset.payloadLength, true);
  if (payloadLength > maxPayload) {
    throw new KnulHeaderError(
      "too_large",
      `a KNUL packet of ${payloadLength} bytes exceeds maxPacketBytes (${maxPayload})`,
    );
  }
  return {
    version,
    kind,
    flags,
    priority: bytes[KnulOffset.priority],
    payloadLength,
    tenant: view.getBigUint64(KnulOffset.tenant, true),
    traceId: bytes.slice(KnulOffset.traceId, KnulOffset.traceId + 16),
  };
}

/** Header words 4–9 of a context (tenant hash, trace id), memoized per context. */
const contextWords = new WeakMap<Context, Uint32Array>();

/**
 * A context as its header carries it: the tenant hash and the trace id, as
 * the six u32 words that {@linkcode writeKnulDataHeader} copies (computed
 * once per context object).
 *
 * @throws {InvalidArgumentError} the trace id is not a W3C trace id.
 */
export function knulContextWords(ctx: Context): Uint32Array {
  let words = contextWords.get(ctx);
  if (words !== undefined) return words;
  words = new Uint32Array(6);
  if (ctx.tenantId !== null) {
    const hash = tenantHash(ctx.tenantId);
    words[0] = Number(hash & 0xffffffffn);
    words[1] = Number(hash >> 32n);
  }
  if (ctx.traceId !== null) {
    if (!/^[0-9a-f]{32}$/i.test(ctx.traceId)) {
      throw new InvalidArgumentError(
        "ctx.traceId must be a W3C trace id (32 hex digits) to travel in a KNUL header",
        { details: { field: "ctx.traceId" } },
      );
    }
    const bytes = new Uint8Array(words.buffer, 8, 16);
    for (let index = 0; index < 16; index++) {
      bytes[index] = parseInt(ctx.traceId.slice(index * 2, index * 2 + 2), 16);
    }
  }
  contextWords.set(ctx, words);
  return words;
}

/** Header word 1 of a DATA packet: version | kind << 8 | flags << 16. */
const DATA_WORD = KNUL_VERSION | (KnulKind.data << 8);
const DATA_RELIABLE_WORD = DATA_WORD | (KREPIS_FLAG_RELIABLE << 16);

/**
 * Writes a DATA packet's header in place: the same bytes as
 * {@linkcode encodeKnulHeader}, as ten little-endian u32 words from
 * `words[at]` (`at` = byte offset ÷ 4; every released target is little-endian),
 * so sending allocates nothing.
 * `context` is from {@linkcode knulContextWords}, `null` for none.
 */
export function writeKnulDataHeader(
  words: Uint32Array,
  at: number,
  reliable: boolean,
  priority: number,
  payloadLength: number,
  context: Uint32Array | null,
): void {
  words[at] = MAGIC_WORD;
  words[at + 1] = reliable ? DATA_RELIABLE_WORD : DATA_WORD;
  words[at + 2] = priority; // the three reserved bytes after it stay zero
  words[at + 3] = payloadLength;
  if (context === null) {
    words.fill(0, at + 4, at + 10);
  } else {
    words.set(context, at + 4);
  }
}
