/**
 * Typed errors of the SDK. Every error thrown by `@krepis/sdk` is a
 * {@linkcode KrepisError} with a stable `code`; subclasses let applications
 * `catch` by kind with `instanceof`.
 *
 * @module
 */

/** Stable, documented error codes (never renamed once released). */
export type KrepisErrorCode =
  | "LOAD"
  | "INTEGRITY"
  | "ABI_MISMATCH"
  | "CLOSED"
  | "PERMISSION"
  | "INVALID_ARGUMENT"
  | "PANIC"
  | "IO"
  | "RESOURCE_EXHAUSTED"
  | "INTERNAL"
  | "LOCKED"
  | "CORRUPT"
  | "CONFLICT"
  | "NOT_FOUND"
  | "UNSUPPORTED"
  | "PROTOCOL"
  | "CONNECTION"
  | "RUNTIME";

/** Options shared by every error constructor. */
export interface KrepisErrorOptions {
  /** The underlying error, if any. */
  cause?: unknown;
  /** Structured details (e.g. `{ field: "workerThreads" }`). */
  details?: Record<string, string>;
}

/**
 * Base class of every error the SDK throws.
 *
 * @example
 * ```ts
 * import { Kernel, KrepisError } from "@krepis/sdk";
 * try {
 *   await Kernel.open({ workerThreads: -1 });
 * } catch (error) {
 *   if (error instanceof KrepisError) console.error(error.code, error.message);
 * }
 * ```
 */
export class KrepisError extends Error {
  /** Stable machine-readable code. */
  readonly code: KrepisErrorCode;
  /** Structured details; empty when there are none. */
  readonly details: Readonly<Record<string, string>>;

  /** Creates an error with a code; prefer the subclasses. */
  constructor(code: KrepisErrorCode, message: string, options: KrepisErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.code = code;
    this.details = Object.freeze({ ...options.details });
    this.name = new.target.name;
  }
}

/**
 * The native library could not be found, downloaded or opened.
 *
 * @example
 * ```ts
 * import { Kernel, LoadError } from "@krepis/sdk";
 * await Kernel.open({ libraryPath: "/nonexistent.so" }).catch((e) => e instanceof LoadError);
 * ```
 */
export class LoadError extends KrepisError {
  /** Creates a load error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("LOAD", message, options);
  }
}

/**
 * A downloaded library did not match the SHA-256 in the package's manifest
 * (after one refetch), or the manifest has no entry for this platform.
 *
 * @example
 * ```ts
 * import { IntegrityError } from "@krepis/sdk";
 * const error = new IntegrityError("checksum mismatch");
 * console.log(error.code); // "INTEGRITY"
 * ```
 */
export class IntegrityError extends KrepisError {
  /** Creates an integrity error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("INTEGRITY", message, options);
  }
}

/** Which identity of a library did not match. */
export interface AbiMismatch {
  /** What the bindings expect. */
  expected: { version: string; abiHash: string };
  /** What the library reported. */
  actual: { version: string; abiHash: string };
}

/**
 * The library's version or ABI hash is not exactly the one these bindings were
 * generated from. The message names both sides.
 *
 * @example
 * ```ts
 * import { AbiMismatchError, Kernel } from "@krepis/sdk";
 * try {
 *   await Kernel.open();
 * } catch (error) {
 *   if (error instanceof AbiMismatchError) console.error(error.expected, error.actual);
 * }
 * ```
 */
export class AbiMismatchError extends KrepisError {
  /** What the bindings expect. */
  readonly expected: { readonly version: string; readonly abiHash: string };
  /** What the library reported. */
  readonly actual: { readonly version: string; readonly abiHash: string };

  /** Creates an ABI mismatch error. */
  constructor(message: string, mismatch: AbiMismatch, options?: KrepisErrorOptions) {
    super("ABI_MISMATCH", message, options);
    this.expected = Object.freeze({ ...mismatch.expected });
    this.actual = Object.freeze({ ...mismatch.actual });
  }
}

/**
 * The object (kernel, buffer, …) was closed before this use.
 *
 * @example
 * ```ts
 * import { ClosedError, Kernel } from "@krepis/sdk";
 * const kernel = await Kernel.open({ dataDir: null });
 * await kernel.close();
 * try { kernel.stats(); } catch (e) { console.log(e instanceof ClosedError); } // true
 * ```
 */
export class ClosedError extends KrepisError {
  /** Creates a closed error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("CLOSED", message, options);
  }
}

/**
 * A Deno permission (or an operating-system permission) needed for the
 * operation is missing. The message names the flag to add.
 *
 * @example
 * ```ts
 * import { PermissionError } from "@krepis/sdk";
 * new PermissionError("needs --allow-ffi").code; // "PERMISSION"
 * ```
 */
export class PermissionError extends KrepisError {
  /** Creates a permission error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("PERMISSION", message, options);
  }
}

/**
 * An argument had the wrong type, was out of range, or was malformed
 * (including handles that were never issued).
 *
 * @example
 * ```ts
 * import { InvalidArgumentError, Kernel } from "@krepis/sdk";
 * await Kernel.open({ workerThreads: 1.5 }).catch((e) => e instanceof InvalidArgumentError);
 * ```
 */
export class InvalidArgumentError extends KrepisError {
  /** Creates an invalid argument error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("INVALID_ARGUMENT", message, options);
  }
}

/**
 * The kernel panicked; the panic was caught at the boundary, the process is
 * fine, and the operation did not happen. Please report it.
 *
 * @example
 * ```ts
 * import { NativePanicError } from "@krepis/sdk";
 * new NativePanicError("kernel panicked").code; // "PANIC"
 * ```
 */
export class NativePanicError extends KrepisError {
  /** Creates a native panic error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("PANIC", message, options);
  }
}

/**
 * An operating-system I/O error inside the kernel.
 *
 * @example
 * ```ts
 * import { IoError } from "@krepis/sdk";
 * new IoError("disk full").code; // "IO"
 * ```
 */
export class IoError extends KrepisError {
  /** Creates an I/O error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("IO", message, options);
  }
}

/**
 * A kernel limit (handles, threads, memory) was reached.
 *
 * @example
 * ```ts
 * import { ResourceExhaustedError } from "@krepis/sdk";
 * new ResourceExhaustedError("too many handles").code; // "RESOURCE_EXHAUSTED"
 * ```
 */
export class ResourceExhaustedError extends KrepisError {
  /** Creates a resource exhausted error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("RESOURCE_EXHAUSTED", message, options);
  }
}

/**
 * An unexpected failure inside the kernel or the SDK (a bug: please report it).
 *
 * @example
 * ```ts
 * import { InternalError } from "@krepis/sdk";
 * new InternalError("unexpected").code; // "INTERNAL"
 * ```
 */
export class InternalError extends KrepisError {
  /** Creates an internal error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("INTERNAL", message, options);
  }
}

/**
 * The data directory is in use by another kernel (in this or another
 * process). `details.path` names it.
 *
 * @example
 * ```ts
 * import { Kernel, LockedError } from "@krepis/sdk";
 * const a = await Kernel.open({ dataDir: "./data" });
 * await Kernel.open({ dataDir: "./data" }).catch((e) => e instanceof LockedError); // true
 * await a.close();
 * ```
 */
export class LockedError extends KrepisError {
  /** Creates a locked error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("LOCKED", message, options);
  }
}

/**
 * The data directory is corrupt or is not a krepis data directory
 * (`details.reason === "foreign"`). Nothing was changed or reinitialised.
 *
 * @example
 * ```ts
 * import { CorruptError } from "@krepis/sdk";
 * new CorruptError("not a krepis data directory").code; // "CORRUPT"
 * ```
 */
export class CorruptError extends KrepisError {
  /** Creates a corrupt-data error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("CORRUPT", message, options);
  }
}

/**
 * A commit check failed (`details.key`, `details.tree`), or an undo would
 * overwrite later changes (`details.conflictingTxId`). Nothing was written.
 *
 * @example
 * ```ts
 * import { ConflictError, Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: "./data" });
 * await kernel.store.commit([{ type: "put", key: "a", value: "1" }], {
 *   checks: [{ key: "a", value: "old" }],
 * }).catch((e) => e instanceof ConflictError); // true
 * ```
 */
export class ConflictError extends KrepisError {
  /** Creates a conflict error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("CONFLICT", message, options);
  }
}

/**
 * Something named does not exist (e.g. a transaction id pruned from the journal).
 *
 * @example
 * ```ts
 * import { NotFoundError } from "@krepis/sdk";
 * new NotFoundError("no such transaction").code; // "NOT_FOUND"
 * ```
 */
export class NotFoundError extends KrepisError {
  /** Creates a not-found error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("NOT_FOUND", message, options);
  }
}

/**
 * The host cannot provide something the caller required, e.g. an isolation
 * feature listed in a guard policy's `require`. `details.feature` names it.
 *
 * @example
 * ```ts
 * import { UnsupportedError } from "@krepis/sdk";
 * new UnsupportedError("landlock: not supported by this kernel").code; // "UNSUPPORTED"
 * ```
 */
export class UnsupportedError extends KrepisError {
  /** Creates an unsupported error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("UNSUPPORTED", message, options);
  }
}

/**
 * The peer broke the KNUL protocol (a malformed header, a wrong version, a
 * packet over `maxPacketBytes`, a tenant the listener does not serve). The
 * link was closed; `details.closeCode` names the close code sent to the peer
 * and `details.field` the refused header field. Other links are unaffected.
 *
 * @example
 * ```ts
 * import { ProtocolError } from "@krepis/sdk";
 * new ProtocolError("bad magic", { details: { closeCode: "2" } }).code; // "PROTOCOL"
 * ```
 */
export class ProtocolError extends KrepisError {
  /** Creates a protocol error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("PROTOCOL", message, options);
  }
}

/**
 * A connection failed or was lost: the address is unreachable, TLS refused
 * the peer (certificate, server name, ALPN), the peer stopped answering, or
 * it closed the link with an error code (`details.closeCode`,
 * `details.reason`).
 *
 * @example
 * ```ts
 * import { ConnectionError } from "@krepis/sdk";
 * new ConnectionError("the peer reset the connection").code; // "CONNECTION"
 * ```
 */
export class ConnectionError extends KrepisError {
  /** Creates a connection error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("CONNECTION", message, options);
  }
}

/**
 * A request to a runtime pool failed in the runtime: its handler threw
 * (`details.reason` `"handler"`, the message is the runtime's), the instance
 * that had it ended (`"crashed"`, `"protocol"`, `"unhealthy"`, with
 * `details.instance`), its deadline passed (`"deadline"`), or no instance is
 * left to serve it (`"unavailable"`). Requests on other instances are not
 * affected.
 *
 * @example
 * ```ts
 * import { RuntimeError } from "@krepis/sdk";
 * new RuntimeError("instance 0 crashed", { details: { reason: "crashed" } }).code; // "RUNTIME"
 * ```
 */
export class RuntimeError extends KrepisError {
  /** Creates a runtime error. */
  constructor(message: string, options?: KrepisErrorOptions) {
    super("RUNTIME", message, options);
  }
}
