/**
 * Wire form of {@linkcode Context} for kernel calls.
 *
 * @module
 */

import type { Context } from "./context.ts";
import { Context as ContextMessage } from "./_gen/proto/krepis/v1/context.ts";

/** The protobuf form of a context, for kernel calls (internal). */
export function encodeContext(ctx: Context): Uint8Array {
  return ContextMessage.encode({
    requestId: ctx.requestId,
    tenantId: ctx.tenantId ?? "",
    traceId: ctx.traceId ?? "",
    priority: ctx.priority,
    deadlineUnixMs: BigInt(ctx.deadline ?? 0),
  }).finish();
}
