/**
 * The explicit request context. Kernel APIs that act on behalf of a request
 * take a {@linkcode Context} argument; the SDK never keeps ambient state
 * (no async-local storage), so what a call runs under is always visible at the
 * call site.
 *
 * @module
 */

import { InvalidArgumentError } from "./errors.ts";

/** Named priorities (any integer 0–255 is valid). */
export const Priority: { readonly LOW: 64; readonly NORMAL: 128; readonly HIGH: 192 } = {
  LOW: 64,
  NORMAL: 128,
  HIGH: 192,
} as const;

/** Longest id (in UTF-8 bytes) accepted for requestId, tenantId and traceId. */
export const MAX_CONTEXT_ID_BYTES = 256;

/** A request context: a frozen plain value, safe to share and to log. */
export interface Context {
  /** Unique id of the request (generated when not given). */
  readonly requestId: string;
  /** The tenant the request acts for, or `null`. */
  readonly tenantId: string | null;
  /** Distributed trace id, or `null`. */
  readonly traceId: string | null;
  /** 0 (lowest) – 255 (highest); default {@linkcode Priority.NORMAL}. */
  readonly priority: number;
  /** Absolute deadline in Unix epoch milliseconds, or `null` for none. */
  readonly deadline: number | null;
}

/** What {@linkcode createContext} accepts; every field is optional. */
export interface ContextInit {
  /** Default: a random UUID. */
  requestId?: string;
  /** Default: none. */
  tenantId?: string | null;
  /** Default: none. */
  traceId?: string | null;
  /** Default: {@linkcode Priority.NORMAL}. */
  priority?: number;
  /** Absolute deadline (`Date` or epoch ms). Exclusive with `timeoutMs`. */
  deadline?: Date | number | null;
  /** Relative deadline from now, in milliseconds. Exclusive with `deadline`. */
  timeoutMs?: number;
}

const encoder = new TextEncoder();

function checkId(field: string, value: unknown, optional: boolean): string | null {
  if (value === undefined || value === null) {
    if (optional) return null;
    throw new InvalidArgumentError(`context.${field} is required`, { details: { field } });
  }
  if (typeof value !== "string") {
    throw new InvalidArgumentError(`context.${field} must be a string, got ${typeof value}`, {
      details: { field },
    });
  }
  if (value.length === 0 || encoder.encode(value).length > MAX_CONTEXT_ID_BYTES) {
    throw new InvalidArgumentError(
      `context.${field} must be 1–${MAX_CONTEXT_ID_BYTES} UTF-8 bytes`,
      { details: { field } },
    );
  }
  return value;
}

/**
 * Creates a validated, frozen {@linkcode Context}.
 *
 * @throws {InvalidArgumentError} naming the field that is wrong.
 *
 * @example
 * ```ts
 * import { createContext, Priority } from "@krepis/sdk";
 * const ctx = createContext({ tenantId: "acme", priority: Priority.HIGH, timeoutMs: 500 });
 * console.log(ctx.requestId, ctx.deadline);
 * ```
 */
export function createContext(init: ContextInit = {}): Context {
  if (typeof init !== "object" || init === null) {
    throw new InvalidArgumentError("context init must be an object");
  }
  const priority = init.priority ?? Priority.NORMAL;
  if (!Number.isInteger(priority) || priority < 0 || priority > 255) {
    throw new InvalidArgumentError(`context.priority must be an integer 0–255, got ${priority}`, {
      details: { field: "priority" },
    });
  }
  if (init.deadline != null && init.timeoutMs !== undefined) {
    throw new InvalidArgumentError("context: give deadline or timeoutMs, not both", {
      details: { field: "deadline" },
    });
  }
  let deadline: number | null = null;
  if (init.timeoutMs !== undefined) {
    if (typeof init.timeoutMs !== "number" || !(init.timeoutMs >= 0) || !isFinite(init.timeoutMs)) {
      throw new InvalidArgumentError("context.timeoutMs must be a finite number ≥ 0", {
        details: { field: "timeoutMs" },
      });
    }
    deadline = Date.now() + init.timeoutMs;
  } else if (init.deadline != null) {
    const value = init.deadline instanceof Date ? init.deadline.getTime() : init.deadline;
    if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
      throw new InvalidArgumentError("context.deadline must be a valid Date or epoch ms > 0", {
        details: { field: "deadline" },
      });
    }
    deadline = Math.floor(value);
  }
  return Object.freeze({
    requestId: checkId("requestId", init.requestId ?? crypto.randomUUID(), false)!,
    tenantId: checkId("tenantId", init.tenantId, true),
    traceId: checkId("traceId", init.traceId, true),
    priority,
    deadline,
  });
}

/**
 * Milliseconds left until the context's deadline (negative when past,
 * `Infinity` when it has none).
 *
 * @example
 * ```ts
 * import { createContext, remainingMs } from "@krepis/sdk";
 * remainingMs(createContext({ timeoutMs: 100 })) <= 100; // true
 * ```
 */
export function remainingMs(ctx: Context, now: number = Date.now()): number {
  return ctx.deadline === null ? Infinity : ctx.deadline - now;
}
