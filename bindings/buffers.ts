/**
 * Shared buffers: memory owned by the kernel that JavaScript reads and writes
 * in place. Bytes you write into `buffer.bytes` are visible to the kernel
 * without a copy, and vice versa.
 *
 * Releasing a buffer (or closing its kernel) detaches every view the SDK
 * handed out, so a use after release sees an empty array instead of someone
 * else's bytes. Do not transfer a buffer's `ArrayBuffer` (transfer lists of
 * `postMessage`/`structuredClone`): the SDK could no longer detach it, so it
 * keeps that memory alive forever (counted in `abandonedBuffers`); copy instead. A buffer that is never released is freed when it is garbage
 * collected and counted in `kernel.stats().buffers.leakedBuffers`.
 *
 * @module
 */

import {
  KREPIS_BUFFER_ABANDONED,
  KREPIS_BUFFER_LEAKED,
  KREPIS_BUFFER_RELEASED,
  KREPIS_MAX_BUFFER_BYTES,
} from "./_gen/symbols.ts";
import { type KernelOwner, warnEscaped } from "./_owner.ts";
import { ClosedError, InvalidArgumentError } from "./errors.ts";

/** Largest buffer `alloc` accepts, in bytes (2 GiB − 1). */
export const MAX_BUFFER_BYTES: number = KREPIS_MAX_BUFFER_BYTES;

export type { ReadonlyBytes } from "./_bytes.ts";

/** Counters of a kernel's data plane, in {@linkcode KernelStats.buffers}. */
export interface BufferStats {
  /** Shared buffers alive. */
  readonly liveBuffers: number;
  /** Bytes held by live shared buffers. */
  readonly liveBytes: number;
  /** Buffers freed by the garbage-collection safety net instead of `release()`. */
  readonly leakedBuffers: number;
  /** Buffers whose ArrayBuffer was transferred away: kept alive forever. */
  readonly abandonedBuffers: number;
  /** Rings alive. */
  readonly liveRings: number;
  /** Sum of ring capacities, in bytes. */
  readonly ringCapacityBytes: number;
  /** Bytes queued in rings now. */
  readonly ringUsedBytes: number;
}

interface Leak {
  owner: KernelOwner;
  handle: number;
}

/** Frees buffers whose every view was garbage collected without `release()`. */
const leaks = new FinalizationRegistry<Leak>(({ owner, handle }) => {
  owner.forget(handle);
  if (!owner.closed) owner.native.symbols.krepis_buffer_release(handle, KREPIS_BUFFER_LEAKED);
});

/**
 * A buffer of kernel-owned memory, readable and writable by JS in place.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * using buffer = kernel.buffers.alloc(1024);
 * buffer.bytes.set([1, 2, 3]); // the kernel sees these bytes without a copy
 * ```
 */
export class SharedBuffer implements Disposable {
  /** Size in bytes (0 after release). */
  get byteLength(): number {
    return this.#released ? 0 : this.#byteLength;
  }
  readonly #owner: KernelOwner;
  readonly #handle: number;
  readonly #byteLength: number;
  readonly #memory: ArrayBuffer;
  readonly #bytes: Uint8Array<ArrayBuffer>;
  #released = false;

  /** Keeps the kernel object alive while this buffer is. */
  readonly #kernel: object;

  /** @internal Use `kernel.buffers.alloc()`. */
  constructor(owner: KernelOwner, handle: number, memory: ArrayBuffer, kernel: object) {
    this.#owner = owner;
    this.#kernel = kernel;
    this.#handle = handle;
    this.#memory = memory;
    this.#byteLength = memory.byteLength;
    this.#bytes = new Uint8Array(memory);
    leaks.register(memory, { owner, handle }, this);
  }

  /**
   * The buffer's bytes (always the same view, no copy).
   *
   * @throws {ClosedError} after `release()` or after the kernel closed.
   */
  get bytes(): Uint8Array<ArrayBuffer> {
    this.#assertLive("bytes");
    return this.#bytes;
  }

  /** The kernel's handle of this buffer (for APIs that take buffers). */
  get handle(): number {
    this.#assertLive("handle");
    return this.#handle;
  }

  /** Throws `ClosedError` naming why, once released or the kernel closed. */
  #assertLive(member: string): void {
    if (this.#released) {
      throw new ClosedError(`SharedBuffer.${member}: the buffer was released`);
    }
    if (this.#owner.closed) {
      throw new ClosedError(`SharedBuffer.${member}: the kernel is closed`);
    }
  }

  /** True after `release()` or after the kernel closed. */
  get released(): boolean {
    return this.#released || this.#owner.closed;
  }

  /**
   * Detaches every view of the buffer (they become empty) and frees its
   * memory. Idempotent.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: null });
   * const buffer = kernel.buffers.alloc(16);
   * const view = buffer.bytes;
   * buffer.release();
   * console.log(view.length); // 0
   * ```
   */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    leaks.unregister(this);
    if (this.#owner.closed) return; // the kernel freed it already
    const detached = this.#owner.unmap(this.#handle, this.#memory);
    if (!detached) warnEscaped("a SharedBuffer's ArrayBuffer");
    this.#owner.native.check(
      this.#owner.native.symbols.krepis_buffer_release(
        this.#handle,
        detached ? KREPIS_BUFFER_RELEASED : KREPIS_BUFFER_ABANDONED,
      ),
    );
  }

  /** Releases the buffer (for `using`). */
  [Symbol.dispose](): void {
    this.release();
  }
}

/**
 * The data-plane API of a kernel: `kernel.buffers`.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * using buffer = kernel.buffers.alloc(4096);
 * console.log(kernel.stats().buffers.liveBytes); // 4096
 * ```
 */
export class Buffers {
  readonly #owner: KernelOwner;
  readonly #kernel: object;
  readonly #out = new BigUint64Array(2);

  /** @internal Use `kernel.buffers`. */
  constructor(owner: KernelOwner, kernel: object) {
    this.#owner = owner;
    this.#kernel = kernel;
  }

  /**
   * Allocates `byteLength` zeroed bytes of kernel memory.
   *
   * @throws {InvalidArgumentError} `byteLength` is not an integer 0–{@linkcode MAX_BUFFER_BYTES}.
   * @throws {ResourceExhaustedError} the kernel is out of memory or handles.
   * @throws {ClosedError} the kernel is closed.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: null });
   * using buffer = kernel.buffers.alloc(8);
   * buffer.bytes[0] = 42;
   * ```
   */
  alloc(byteLength: number): SharedBuffer {
    this.#owner.assertOpen("buffers.alloc");
    if (
      typeof byteLength !== "number" || !Number.isInteger(byteLength) || byteLength < 0 ||
      byteLength > MAX_BUFFER_BYTES
    ) {
      throw new InvalidArgumentError(
        `buffers.alloc: byteLength must be an integer from 0 to ${MAX_BUFFER_BYTES}, got ${
          typeof byteLength === "number" ? byteLength : typeof byteLength
        }`,
        { details: { field: "byteLength" } },
      );
    }
    const { native } = this.#owner;
    native.check(native.symbols.krepis_buffer_alloc(this.#owner.handle, byteLength, this.#out));
    const handle = Number(this.#out[0]);
    const memory = this.#owner.map(handle, this.#out[1], byteLength);
    return new SharedBuffer(this.#owner, handle, memory, this.#kernel);
  }
}

/**
 * Wraps a buffer the kernel produced (e.g. a large store value) as a
 * `SharedBuffer` of `kernel`, mapping it once (SDK-internal).
 */
export function adoptKernelBuffer(
  owner: KernelOwner,
  kernel: object,
  buffer: { handle: number; address: bigint; byteLength: number },
): SharedBuffer {
  const memory = owner.map(buffer.handle, buffer.address, buffer.byteLength);
  return new SharedBuffer(owner, buffer.handle, memory, kernel);
}
