import assert from "node:assert/strict";
import {
  decodeKnulHeader,
  encodeKnulHeader,
  KnulHeaderError,
  tenantHash,
} from "../bindings/transport/_knul.ts";

interface Vectors {
  maxPacketBytes: number;
  valid: {
    name: string;
    hex: string;
    header: {
      version: number;
      kind: number;
      flags: number;
      priority: number;
      payloadLength: number;
      tenant: string;
      traceId: string;
    };
  }[];
  invalid: { name: string; hex: string; error: string }[];
}

const vectors: Vectors = JSON.parse(
  Deno.readTextFileSync(new URL("./vectors/knul_header.json", import.meta.url)),
);
const fromHex = (hex: string) => Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
const toHex = (bytes: Uint8Array) =>
  Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

Deno.test("KNUL header: the shared vectors decode and re-encode byte for byte (same as Rust)", () => {
  for (const vector of vectors.valid) {
    const header = decodeKnulHeader(fromHex(vector.hex), vectors.maxPacketBytes);
    assert.equal(header.version, vector.header.version, vector.name);
    assert.equal(header.kind, vector.header.kind);
    assert.equal(header.flags, vector.header.flags);
    assert.equal(header.priority, vector.header.priority);
    assert.equal(header.payloadLength, vector.header.payloadLength);
    assert.equal(header.tenant, BigInt(vector.header.tenant));
    assert.equal(toHex(header.traceId), vector.header.traceId);
    assert.equal(toHex(encodeKnulHeader(header)), vector.hex);
  }
  for (const vector of vectors.invalid) {
    assert.throws(
      () => decodeKnulHeader(fromHex(vector.hex), vectors.maxPacketBytes),
      (error: unknown) => error instanceof KnulHeaderError && error.field === vector.error,
      vector.name,
    );
  }
});

Deno.test("KNUL header: random bytes never throw anything but KnulHeaderError", () => {
  let state = 0x2545f491;
  const next = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
  for (let round = 0; round < 20_000; round++) {
    const bytes = Uint8Array.from({ length: next() % 48 }, () => next() & 0xff);
    if (round % 2 === 0 && bytes.length >= 40) bytes.set([0x4b, 0x4e, 0x55, 0x4c, 1], 0);
    try {
      const header = decodeKnulHeader(bytes, 0xffffffff);
      assert.equal(toHex(encodeKnulHeader(header)), toHex(bytes.subarray(0, 40)));
    } catch (error) {
      assert.ok(error instanceof KnulHeaderError, String(error));
    }
  }
});

Deno.test("KNUL tenant hash is FNV-1a 64 (same as Rust)", () => {
  assert.equal(tenantHash(""), 0n);
  assert.equal(tenantHash("a"), 0xaf63dc4c8601ec8cn);
});
