import assert from "node:assert/strict";
import { encodeCommitRequest } from "../bindings/store/_commit_codec.ts";
import { CommitRequest, Op_Kind } from "../bindings/_gen/proto/krepis/v1/store.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

Deno.test("the hand-written commit encoder matches the schema (decoded by the generated decoder)", () => {
  const big = new Uint8Array(300_000).fill(7);
  const encoded = encodeCommitRequest(
    [
      { put: true, key: bytes("k1"), value: bytes("v1"), tree: null },
      { put: false, key: bytes("k2"), value: new Uint8Array(), tree: bytes("users") },
      { put: true, key: new Uint8Array(), value: new Uint8Array(), tree: bytes("") },
      { put: true, key: bytes("big"), value: big, tree: null },
    ],
    [
      { key: bytes("k1"), value: null, tree: null },
      { key: bytes("k3"), value: bytes("x"), tree: bytes("t") },
      { key: bytes("k4"), value: new Uint8Array(), tree: null },
    ],
    {
      requestId: bytes("req"),
      tenantId: bytes("acme"),
      traceId: new Uint8Array(),
      priority: 200,
      deadlineUnixMs: 1_800_000_000_123,
    },
  );
  const decoded = CommitRequest.decode(encoded);
  assert.equal(decoded.ops.length, 4);
  assert.equal(decoded.ops[0].kind, Op_Kind.KIND_PUT);
  assert.deepEqual(decoded.ops[0].key, bytes("k1"));
  assert.deepEqual(decoded.ops[0].value, bytes("v1"));
  assert.equal(decoded.ops[0].tree, undefined);
  assert.equal(decoded.ops[1].kind, Op_Kind.KIND_DELETE);
  assert.equal(decoded.ops[1].tree, "users");
  assert.equal(decoded.ops[2].tree, "", "an explicit empty tree name is kept");
  assert.equal(decoded.ops[3].value.length, big.length);
  assert.equal(decoded.checks[0].absent, true);
  assert.deepEqual(decoded.checks[1].value, bytes("x"));
  assert.equal(decoded.checks[1].tree, "t");
  assert.equal(decoded.checks[2].absent, false);
  assert.equal(decoded.checks[2].value.length, 0);
  assert.equal(decoded.ctx?.requestId, "req");
  assert.equal(decoded.ctx?.tenantId, "acme");
  assert.equal(decoded.ctx?.priority, 200);
  assert.equal(decoded.ctx?.deadlineUnixMs, 1_800_000_000_123n);
  assert.deepEqual(CommitRequest.decode(encodeCommitRequest([], [], null)), {
    ops: [],
    checks: [],
    ctx: undefined,
  });
});
