/**
 * The KNUL packet header (docs/knul.md) in TypeScript: byte-identical to
 * `ffi/src/knul.rs`, both tested against `tests/vectors/knul_header.json`.
 * SDK-internal until the transport API lands.
 *
 * @module
 */

import { KREPIS_KNUL_HEADER_BYTES, KREPIS_KNUL_VERSION } from "./_gen/symbols.ts";

/** Header size in bytes (from the ABI header, so Rust and TS agree). */
export const KNUL_HEADER_BYTES: number = KREPIS_KNUL_HEADER_BYTES;
/** The protocol version this codec speaks. */
export const KNUL_VERSION: number = KREPIS_KNUL_VERSION;
const MAGIC = [0x4b, 0x4e, 0x55, 0x4c]; // "KNUL"
const KNOWN_FLAGS = 0b11;

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

/** FNV-1a 64 of a tenant id, as the header carries it (0n for none). */
export function tenantHash(tenant: string): bigint {
  if (tenant === "") return 0n;
  let hash = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(tenant)) {
    hash = ((hash ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return hash;
}

/** Writes a header's 40 bytes. */
export function encodeKnulHeader(header: KnulHeader): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(KNUL_HEADER_BYTES);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  out[4] = header.version;
  out[5] = header.kind;
  view.setUint16(6, header.flags, true);
  out[8] = header.priority;
  view.setUint32(12, header.payloadLength, true);
  view.setBigUint64(16, header.tenant, true);
  out.set(header.traceId.subarray(0, 16), 24);
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
  if (bytes[4] !== KNUL_VERSION) {
    throw new KnulHeaderError(
      "version",
      `KNUL version ${bytes[4]} is not supported (speaks ${KNUL_VERSION})`,
    );
  }
  if (bytes[5] < 1 || bytes[5] > 5) {
    throw new KnulHeaderError("kind", `unknown KNUL packet kind ${bytes[5]}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, KNUL_HEADER_BYTES);
  const flags = view.getUint16(6, true);
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    throw new KnulHeaderError("flags", `unknown KNUL flag bits ${flags.toString(2)}`);
  }
  if (bytes[9] !== 0 || bytes[10] !== 0 || bytes[11] !== 0) {
    throw new KnulHeaderError("reserved", "KNUL reserved bytes must be zero");
  }
  const payloadLength = view.getUint32(12, true);
  if (payloadLength > maxPayload) {
    throw new KnulHeaderError(
      "too_large",
      `a KNUL packet of ${payloadLength} bytes exceeds maxPacketBytes (${maxPayload})`,
    );
  }
  return {
    version: bytes[4],
    kind: bytes[5],
    flags,
    priority: bytes[8],
    payloadLength,
    tenant: view.getBigUint64(16, true),
    traceId: bytes.slice(24, 40),
  };
}
