/**
 * The opened kernel library: its symbols, and the status/last-error protocol
 * every call goes through (a negative status becomes a typed error built from
 * the kernel's `krepis.v1.Error`).
 *
 * @module
 */

import type { symbols } from "./_gen/symbols.ts";
import { Error as ErrorMessage, ErrorCode } from "./_gen/proto/krepis/v1/error.ts";
import {
  ClosedError,
  ConflictError,
  ConnectionError,
  CorruptError,
  InternalError,
  InvalidArgumentError,
  IoError,
  type KrepisError,
  LockedError,
  NativePanicError,
  NotFoundError,
  PermissionError,
  ProtocolError,
  ResourceExhaustedError,
  UnsupportedError,
} from "./errors.ts";

/** The typed symbol table of the kernel. */
export type KernelSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** Output buffers start at this size and grow when a result is larger. */
const SCRATCH_BYTES = 1024;

/** Turns a decoded kernel error into the matching typed error. */
export function errorFromNative(error: ErrorMessage): KrepisError {
  const message = error.message || `${error.operation} failed with code ${error.code}`;
  const options = { details: { operation: error.operation, ...error.details } };
  switch (error.code) {
    case ErrorCode.ERROR_CODE_INVALID_ARGUMENT:
    case ErrorCode.ERROR_CODE_INVALID_HANDLE:
      return new InvalidArgumentError(message, options);
    case ErrorCode.ERROR_CODE_CLOSED:
      return new ClosedError(message, options);
    case ErrorCode.ERROR_CODE_PANIC:
      return new NativePanicError(message, options);
    case ErrorCode.ERROR_CODE_IO:
      return new IoError(message, options);
    case ErrorCode.ERROR_CODE_PERMISSION:
      return new PermissionError(message, options);
    case ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED:
      return new ResourceExhaustedError(message, options);
    case ErrorCode.ERROR_CODE_LOCKED:
      return new LockedError(message, options);
    case ErrorCode.ERROR_CODE_CORRUPT:
      return new CorruptError(message, options);
    case ErrorCode.ERROR_CODE_CONFLICT:
      return new ConflictError(message, options);
    case ErrorCode.ERROR_CODE_NOT_FOUND:
      return new NotFoundError(message, options);
    case ErrorCode.ERROR_CODE_UNSUPPORTED:
      return new UnsupportedError(message, options);
    case ErrorCode.ERROR_CODE_PROTOCOL:
      return new ProtocolError(message, options);
    case ErrorCode.ERROR_CODE_CONNECTION:
      return new ConnectionError(message, options);
    default:
      return new InternalError(message, options);
  }
}

/** A loaded kernel library that passed the ABI gate. */
export class NativeLibrary {
  /** Where the library was loaded from. */
  readonly path: string;
  /** The raw symbols (for the SDK's modules and its tests). */
  readonly symbols: KernelSymbols;
  /** The library's version (equal to the package version). */
  readonly version: string;
  /** The library's ABI hash (equal to the bindings'). */
  readonly abiHash: string;
  #scratch = new Uint8Array(SCRATCH_BYTES);

  constructor(path: string, library: Deno.DynamicLibrary<typeof symbols>, identity: {
    version: string;
    abiHash: string;
  }) {
    this.path = path;
    this.symbols = library.symbols;
    this.version = identity.version;
    this.abiHash = identity.abiHash;
  }

  /** Returns `status` when it is a success; throws the kernel's typed error otherwise. */
  check(status: number): number {
    if (status >= 0) return status;
    throw this.lastError(status);
  }

  /** The typed error for a failed call that returned `status`. */
  lastError(status: number): KrepisError {
    // Not through readOutput/check: a failure here must not recurse.
    let length = this.symbols.krepis_last_error(this.#scratch, this.#scratch.length);
    if (length > this.#scratch.length) {
      this.#scratch = new Uint8Array(length);
      length = this.symbols.krepis_last_error(this.#scratch, this.#scratch.length);
    }
    const bytes = this.#scratch.subarray(0, Math.max(0, length));
    if (length <= 0) {
      return new InternalError(`a kernel call failed with status ${status} but left no error`);
    }
    return errorFromNative(ErrorMessage.decode(bytes));
  }

  /**
   * Calls an export that writes into `(out, cap)` and returns the full length,
   * retrying once with a buffer of that length when the scratch was too small.
   * The returned view is only valid until the next call.
   */
  readOutput(fill: (out: Uint8Array<ArrayBuffer>, cap: number) => number): Uint8Array {
    let length = this.check(fill(this.#scratch, this.#scratch.length));
    if (length > this.#scratch.length) {
      this.#scratch = new Uint8Array(length);
      length = this.check(fill(this.#scratch, this.#scratch.length));
    }
    return this.#scratch.subarray(0, length);
  }
}
