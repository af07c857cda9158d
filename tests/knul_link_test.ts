// The link-level KNUL vectors (tests/vectors/knul_link.json): a raw QUIC
// peer (Deno's QUIC) plays each case step by step against a real kernel and
// checks the kernel answers as docs/knul.md says.
import assert from "node:assert/strict";
import { ConnectionError, Kernel, type Link, ProtocolError } from "../mod.ts";
import { encodeKnulHeader } from "../bindings/transport/_knul.ts";
import {
  connectRawPeer,
  listenRawPeer,
  type RawBiStream,
  type RawPeer,
  type RawSendStream,
} from "./_quic_peer.ts";
import { libraryPath } from "./_helpers.ts";

interface Step {
  op: string;
  kind?: number;
  flags?: number;
  payloadHex?: string;
  ms?: number;
  code?: number;
  discarded?: number;
}

interface ClientCase {
  name: string;
  spec: string;
  steps: Step[];
  expect: {
    refusedAtHello?: number;
    delivered?: string[];
    end?: "clean" | "protocol" | "connection";
    closeCode?: number;
    field?: string;
  };
}

interface ServerHello {
  name: string;
  flags: number;
  payloadHex: string;
  expect: { closeCode: number | null };
}

const vectors: { clientCases: ClientCase[]; serverHellos: ServerHello[] } = JSON.parse(
  Deno.readTextFileSync(new URL("./vectors/knul_link.json", import.meta.url)),
);
const libraryOptions = { dataDir: null, libraryPath: libraryPath() };
const fromHex = (hex: string) => Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
const toHex = (bytes: ArrayLike<number>) =>
  Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function packet(step: { kind?: number; flags?: number; payloadHex?: string }): Uint8Array {
  const payload = fromHex(step.payloadHex ?? "");
  const header = encodeKnulHeader({
    version: 1,
    kind: step.kind ?? 1,
    flags: step.flags ?? 1,
    priority: 128,
    payloadLength: payload.length,
    tenant: 0n,
    traceId: new Uint8Array(16),
  });
  return new Uint8Array([...header, ...payload]);
}

/** Bytes a stream delivered beyond what was read so far. */
const leftovers = new WeakMap<RawBiStream, Uint8Array>();

/** Reads exactly `count` bytes from a stream (keeping the rest of a chunk). */
async function readBytes(stream: RawBiStream, count: number): Promise<Uint8Array> {
  let buffered = leftovers.get(stream) ?? new Uint8Array(0);
  while (buffered.length < count) {
    const chunk = await stream.read();
    if (chunk === null) {
      throw new Error(`the stream ended after ${buffered.length} of ${count} bytes`);
    }
    buffered = new Uint8Array([...buffered, ...chunk]);
  }
  leftovers.set(stream, buffered.slice(count));
  return buffered.slice(0, count);
}

for (const vector of vectors.clientCases) {
  Deno.test(`KNUL link vector (${vector.spec}): ${vector.name}`, async () => {
    await using kernel = await Kernel.open(libraryOptions);
    const { cert, key } = kernel.transport.createDevCertificate();
    await using listener = await kernel.transport.listen({ cert, key });
    const raw: RawPeer = await connectRawPeer({
      hostname: "127.0.0.1",
      port: listener.addr.port,
      caCert: cert,
      serverName: "localhost",
    });
    let control: RawBiStream | undefined;
    let uni: RawSendStream | undefined;
    let link: Link | undefined;
    const delivered: string[] = [];
    let ending: Promise<unknown> | undefined;
    const accepted = async () => {
      if (link !== undefined) return link;
      link = (await listener.accept())!;
      const reading = link;
      ending = (async () => {
        for await (const got of reading) delivered.push(toHex(got.data));
        return "clean";
      })().catch((error) => error);
      return link;
    };
    const refused = vector.expect.refusedAtHello !== undefined;
    for (const step of vector.steps) {
      // Once refused, the raw peer's later writes fail: the kernel closed.
      if (refused) await run(step).catch(() => {});
      else await run(step);
    }
    async function run(step: Step): Promise<void> {
      switch (step.op) {
        case "control":
          control ??= await raw.openBi();
          await control.write(packet(step));
          break;
        case "serverHello": {
          const hello = await readBytes(control!, 45);
          assert.equal(hello[5], 2, "a hello");
          assert.equal(hello[6], 1, "flags exactly reliable");
          await accepted();
          break;
        }
        case "uni":
          uni ??= await raw.openUni();
          await uni.write(packet(step));
          break;
        case "finishUni":
          uni ??= await raw.openUni();
          await uni.close();
          break;
        case "datagram":
          await raw.sendDatagram(packet(step));
          break;
        case "wait":
          await delay(step.ms!);
          break;
        case "assertOpen":
          assert.equal(link!.closed, false, "the link is still open");
          break;
        case "closeConnection":
          raw.close(step.code!, "");
          break;
        case "readConfirmation": {
          const header = await readBytes(control!, 40);
          assert.equal(header[5], 5, "a close");
          assert.equal(header[6], 3, "reliable and final");
          const length = new DataView(header.buffer).getUint32(12, true);
          const payload = await readBytes(control!, length);
          const view = new DataView(payload.buffer);
          assert.equal(view.getUint32(0, true), step.code);
          assert.equal(view.getUint32(4, true), step.discarded);
          raw.close(step.code!, "");
          break;
        }
        default:
          throw new Error(`unknown step ${step.op}`);
      }
    }
    const expect = vector.expect;
    if (expect.refusedAtHello !== undefined) {
      const closed = await raw.closed;
      assert.equal(closed.closeCode, expect.refusedAtHello, closed.reason);
      assert.equal(listener.stats().refused, 1);
      assert.equal(listener.stats().accepted, 0);
    } else {
      const ended = await ending!;
      assert.deepEqual(delivered, expect.delivered);
      if (expect.end === "clean") {
        assert.equal(ended, "clean");
        assert.equal((await link!.ended).code, expect.closeCode);
      } else if (expect.end === "protocol") {
        assert.ok(ended instanceof ProtocolError, String(ended));
        assert.equal(ended.details.closeCode, String(expect.closeCode));
        if (expect.field) assert.equal(ended.details.field, expect.field);
        assert.equal((await raw.closed).closeCode, expect.closeCode);
      } else {
        assert.ok(ended instanceof ConnectionError, String(ended));
        assert.equal(ended.details.closeCode, String(expect.closeCode));
      }
      await link!.close({ timeoutMs: 1000 });
    }
    await raw[Symbol.asyncDispose]();
  });
}

for (const vector of vectors.serverHellos) {
  Deno.test(`KNUL link vector (Handshake, client side): ${vector.name}`, async () => {
    await using kernel = await Kernel.open(libraryOptions);
    const { cert, key } = kernel.transport.createDevCertificate();
    await using server = await listenRawPeer({ cert, key });
    const connecting = kernel.transport.connect({
      hostname: "127.0.0.1",
      port: server.port,
      serverName: "localhost",
      caCerts: [cert],
    });
    const conn = await server.accept();
    const control = await conn.acceptBi();
    await readBytes(control, 45); // the kernel's hello
    await control.write(packet({ kind: 2, ...vector }));
    if (vector.expect.closeCode === null) {
      const link = await connecting;
      assert.equal(link.maxSendBytes > 0, true);
      conn.close(1, "done");
      await link.close({ timeoutMs: 500 });
    } else {
      await assert.rejects(
        connecting,
        (error: unknown) =>
          error instanceof ProtocolError &&
          error.details.closeCode === String(vector.expect.closeCode),
      );
      assert.equal((await conn.closed).closeCode, vector.expect.closeCode);
    }
  });
}
