/**
 * What the kernel's sub-APIs (buffers, rings, store, transport, http, guard)
 * need from the kernel that owns them: the library, the kernel handle, its
 * event queue, the open/closed state, and the registry of JS views over
 * kernel memory that must be detached before that memory is freed.
 *
 * @module
 */

import type { KernelEvents } from "./_events.ts";
import type { NativeLibrary } from "./_native.ts";
import { ClosedError } from "./errors.ts";

/** The kernel as seen by its sub-APIs. */
export class KernelOwner {
  readonly native: NativeLibrary;
  readonly handle: number;
  /** Where everything JS waits for in this kernel is announced. */
  readonly events: KernelEvents;
  #closed = false;
  #closing = false;
  /** Native handle → the ArrayBuffer mapped over that object's memory. */
  readonly #mappings = new Map<number, WeakRef<ArrayBuffer>>();

  constructor(native: NativeLibrary, handle: number, events: KernelEvents) {
    this.native = native;
    this.handle = handle;
    this.events = events;
  }

  get closed(): boolean {
    return this.#closed;
  }

  assertOpen(operation: string): void {
    if (this.#closed || this.#closing) {
      throw new ClosedError(`${operation}: the kernel is closed`);
    }
  }

  /** Refuses new operations while `close()` finishes the ones under way. */
  beginClose(): void {
    this.#closing = true;
  }

  /**
   * Maps `byteLength` bytes of kernel memory at `address` into JS (once per
   * object). The ArrayBuffer's own `transfer` methods are disabled: moving
   * kernel memory to an ArrayBuffer the SDK cannot detach would let it
   * outlive the memory.
   */
  map(handle: number, address: bigint, byteLength: number): ArrayBuffer {
    const pointer = Deno.UnsafePointer.create(address);
    if (pointer === null) throw new ClosedError("the kernel returned a null address");
    const memory = Deno.UnsafePointerView.getArrayBuffer(pointer, byteLength);
    for (const method of ["transfer", "transferToFixedLength"]) {
      Object.defineProperty(memory, method, { value: refuseTransfer, configurable: false });
    }
    this.#mappings.set(handle, new WeakRef(memory));
    return memory;
  }

  /**
   * Detaches the mapping of one object: every view of it becomes empty.
   * Returns false when it was already detached by someone else (transferred
   * away despite the guard): the memory must then never be freed.
   */
  unmap(handle: number, memory: ArrayBuffer): boolean {
    this.#mappings.delete(handle);
    if (memory.detached) return false;
    detach(memory);
    return true;
  }

  /** Drops the record of a mapping the garbage collector reclaimed. */
  forget(handle: number): void {
    this.#mappings.delete(handle);
  }

  /**
   * Marks the kernel closed and detaches every mapping (before native memory
   * is freed). Returns the handles whose memory was transferred away: the
   * caller abandons them so the kernel never frees that memory.
   */
  closeAll(): number[] {
    this.#closed = true;
    const escaped: number[] = [];
    for (const [handle, reference] of this.#mappings) {
      const memory = reference.deref();
      if (memory === undefined) continue;
      if (memory.detached) escaped.push(handle);
      else detach(memory);
    }
    this.#mappings.clear();
    return escaped;
  }

  /** Objects currently mapped (for tests). */
  get mappedCount(): number {
    return this.#mappings.size;
  }
}

function refuseTransfer(): never {
  throw new TypeError(
    "kernel memory cannot be transferred: copy it (slice()) or release the SharedBuffer",
  );
}

const nativeTransfer = ArrayBuffer.prototype.transfer;

/** Detaches `memory` (length 0 everywhere) without copying its contents. */
function detach(memory: ArrayBuffer): void {
  nativeTransfer.call(memory, 0);
}

/** Warns once per process about memory the SDK could not detach. */
let warned = false;
export function warnEscaped(what: string): void {
  if (warned) return;
  warned = true;
  console.warn(
    `@krepis/sdk: ${what} was transferred away from the SDK (structuredClone/postMessage ` +
      "transfer list?); its kernel memory is kept alive forever and counted in " +
      "stats().buffers.abandonedBuffers. Copy kernel memory instead of transferring it.",
  );
}

const owners = new WeakMap<object, KernelOwner>();

/** Associates a public kernel object with its owner (called by the Kernel constructor). */
export function registerOwner(kernel: object, owner: KernelOwner): void {
  owners.set(kernel, owner);
}

/** The owner of a kernel (for the SDK's internal modules and tests). */
export function ownerOf(kernel: object): KernelOwner {
  const owner = owners.get(kernel);
  if (owner === undefined) throw new TypeError("not a Kernel");
  return owner;
}
