/**
 * What the kernel's sub-APIs (buffers, rings, and later store, transport…)
 * need from the kernel that owns them: the library, the kernel handle, the
 * open/closed state, and the registry of JS views over kernel memory that must
 * be detached before that memory is freed.
 *
 * @module
 */

import type { NativeLibrary } from "./_native.ts";
import { ClosedError } from "./errors.ts";

/** The kernel as seen by its sub-APIs. */
export class KernelOwner {
  readonly native: NativeLibrary;
  readonly handle: number;
  #closed = false;
  /** Native handle → the ArrayBuffer mapped over that object's memory. */
  readonly #mappings = new Map<number, WeakRef<ArrayBuffer>>();

  constructor(native: NativeLibrary, handle: number) {
    this.native = native;
    this.handle = handle;
  }

  get closed(): boolean {
    return this.#closed;
  }

  assertOpen(operation: string): void {
    if (this.#closed) throw new ClosedError(`${operation}: the kernel is closed`);
  }

  /** Maps `byteLength` bytes of kernel memory at `address` into JS (once per object). */
  map(handle: number, address: bigint, byteLength: number): ArrayBuffer {
    const pointer = Deno.UnsafePointer.create(address);
    if (pointer === null) throw new ClosedError("the kernel returned a null address");
    const memory = Deno.UnsafePointerView.getArrayBuffer(pointer, byteLength);
    this.#mappings.set(handle, new WeakRef(memory));
    return memory;
  }

  /** Detaches the mapping of one object: every view of it becomes empty. */
  unmap(handle: number, memory: ArrayBuffer): void {
    this.#mappings.delete(handle);
    if (!memory.detached) memory.transfer(0);
  }

  /** Marks the kernel closed and detaches every mapping (before native memory is freed). */
  closeAll(): void {
    this.#closed = true;
    for (const reference of this.#mappings.values()) {
      const memory = reference.deref();
      if (memory !== undefined && !memory.detached) memory.transfer(0);
    }
    this.#mappings.clear();
  }

  /** Objects currently mapped (for tests). */
  get mappedCount(): number {
    return this.#mappings.size;
  }
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
