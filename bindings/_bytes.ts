/**
 * The type of every view of kernel-produced bytes the SDK hands out (ring
 * records, store values and scans, packets). It sits below the capabilities
 * because rings, a foundation module, hand such views out too;
 * `buffers.ts` re-exports it as part of the public API.
 *
 * @module
 */

/**
 * A read-only view of bytes the kernel produced: a `Uint8Array` without the
 * methods that write. Writing through a cast is a bug; the kernel may be
 * reading or reusing that memory.
 */
export interface ReadonlyBytes extends
  Omit<
    Uint8Array<ArrayBuffer>,
    "set" | "fill" | "copyWithin" | "reverse" | "sort" | "subarray" | number
  > {
  /** Byte at `index`. */
  readonly [index: number]: number;
  /** A read-only view of a range (no copy). */
  subarray(begin?: number, end?: number): ReadonlyBytes;
}
