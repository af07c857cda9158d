/**
 * The wire forms of a {@linkcode Context} for kernel calls: the protobuf
 * message (journal undo, and the commit record through the next form) and the
 * pre-encoded bytes the store's hand-written commit encoder takes, and the
 * tenant hash that KNUL headers (links, runtime frames) carry. A context
 * travels in a KNUL packet header as that hash and trace id bytes: the rest
 * of that encoding is part of the header codec, `transport/_knul.ts`.
 *
 * @module
 */

import type { Context } from "./context.ts";
import type { Context as ContextMessage } from "./_gen/proto/krepis/v1/context.ts";
import { InvalidArgumentError } from "./errors.ts";

/** A context, already as bytes (for `store/_commit_codec.ts`). */
export interface EncodedContext {
  requestId: Uint8Array;
  tenantId: Uint8Array;
  traceId: Uint8Array;
  priority: number;
  deadlineUnixMs: number;
}

const encoder = new TextEncoder();

/** FNV-1a 64 of a tenant id, as KNUL headers carry it (0n for none). */
export function tenantHash(tenant: string): bigint {
  if (tenant === "") return 0n;
  let hash = 0xcbf29ce484222325n;
  for (const byte of encoder.encode(tenant)) {
    hash = ((hash ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return hash;
}

/**
 * The protobuf form of `ctx` (`undefined` stays `undefined`). Checks the
 * shape, since a context may be hand-made rather than from `createContext()`.
 */
export function contextMessage(ctx: Context | undefined): ContextMessage | undefined {
  if (ctx === undefined) return undefined;
  if (
    typeof ctx !== "object" || ctx === null || typeof ctx.requestId !== "string" ||
    !Number.isInteger(ctx.priority) || ctx.priority < 0 || ctx.priority > 255 ||
    (ctx.deadline !== null && !Number.isSafeInteger(ctx.deadline))
  ) {
    throw new InvalidArgumentError("ctx must be a Context from createContext()", {
      details: { field: "ctx" },
    });
  }
  return {
    requestId: ctx.requestId,
    tenantId: ctx.tenantId ?? "",
    traceId: ctx.traceId ?? "",
    priority: ctx.priority,
    deadlineUnixMs: BigInt(ctx.deadline ?? 0),
  };
}

/** `ctx` as the commit encoder takes it (`null` without a context), checked as above. */
export function encodedContext(ctx: Context | undefined): EncodedContext | null {
  const message = contextMessage(ctx);
  if (message === undefined) return null;
  return {
    requestId: encoder.encode(message.requestId),
    tenantId: encoder.encode(message.tenantId),
    traceId: encoder.encode(message.traceId),
    priority: message.priority,
    deadlineUnixMs: Number(message.deadlineUnixMs),
  };
}
