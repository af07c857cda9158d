/**
 * The store's two feeds: {@linkcode StoreScan} streams stored entries in
 * batches the kernel fills, {@linkcode StoreWatch} streams changes through a
 * kernel → JS ring. Both are made by `Store.scan` / `Store.watch`.
 *
 * @module
 */

import {
  KREPIS_SCAN_ENTRY_HEADER_BYTES,
  KREPIS_WATCH_OVERFLOW,
  KREPIS_WATCH_PUT,
  KREPIS_WATCH_VALUE_OMITTED,
} from "../_gen/symbols.ts";
import type { ReadonlyBytes } from "../_bytes.ts";
import type { KernelOwner } from "../_owner.ts";
import type { RingReader } from "../_ring.ts";
import { ResourceExhaustedError } from "../errors.ts";

/** One entry of a scan: read-only views into the batch the kernel filled (no per-entry copy). */
export interface StoreEntry {
  /** The key (without the tree). */
  readonly key: ReadonlyBytes;
  /** The value. */
  readonly value: ReadonlyBytes;
}

/** A change seen by {@linkcode Store.watch}. */
export interface StoreChange {
  /** What happened to the key. */
  readonly type: "put" | "delete";
  /** The key (a copy). */
  readonly key: Uint8Array;
  /** The new value (a copy); `null` for deletes, or when too large for the feed. */
  readonly value: Uint8Array | null;
}

const SCAN_BATCH_BYTES = 64 * 1024;

/**
 * A streaming scan: entries arrive in batches of up to 64 KiB (one FFI call
 * per batch), so a scan of any size never loads everything. Close it early
 * with `using` or `break`.
 */
export class StoreScan implements IterableIterator<StoreEntry>, Disposable {
  readonly #owner: KernelOwner;
  readonly #handle: number;
  #batch = new Uint8Array(SCAN_BATCH_BYTES);
  #words = new Uint32Array(this.#batch.buffer);
  #filled = this.#batch;
  #filledWords = this.#words;
  readonly #info = new Uint32Array(2);
  #count = 0;
  #index = 0;
  #offset = 0;
  #done = false;

  /** @internal */
  constructor(owner: KernelOwner, handle: number) {
    this.#owner = owner;
    this.#handle = handle;
  }

  #fill(): boolean {
    const { native } = this.#owner;
    this.#owner.assertOpen("store.scan");
    for (;;) {
      native.check(
        native.symbols.krepis_store_scan_next(
          this.#handle,
          this.#batch,
          this.#batch.length,
          this.#info,
        ),
      );
      if (this.#info[0] > 0) {
        // The filled batch now belongs to the entries handed out from it; the
        // next batch gets fresh memory, so entries stay valid after iteration.
        this.#filled = this.#batch;
        this.#filledWords = this.#words;
        this.#batch = new Uint8Array(this.#batch.length);
        this.#words = new Uint32Array(this.#batch.buffer);
        this.#count = this.#info[0];
        this.#index = 0;
        this.#offset = 0;
        return true;
      }
      if (this.#info[1] === 0) return false;
      // One entry larger than the batch: grow the batch to hold it.
      this.#batch = new Uint8Array(Math.ceil(this.#info[1] / 8) * 8);
      this.#words = new Uint32Array(this.#batch.buffer);
    }
  }

  /** The next entry. */
  next(): IteratorResult<StoreEntry, undefined> {
    if (this.#done) return { done: true, value: undefined };
    if (this.#index === this.#count && !this.#fill()) {
      this.close();
      return { done: true, value: undefined };
    }
    const offset = this.#offset;
    const keyLength = this.#filledWords[offset >> 2];
    const valueLength = this.#filledWords[(offset >> 2) + 1];
    const keyAt = offset + KREPIS_SCAN_ENTRY_HEADER_BYTES;
    const batch = this.#filled;
    const entry = {
      key: batch.subarray(keyAt, keyAt + keyLength) as ReadonlyBytes,
      value: batch.subarray(
        keyAt + keyLength,
        keyAt + keyLength + valueLength,
      ) as ReadonlyBytes,
    };
    // Entries are padded to 8 bytes (the header's u32 pair stays aligned).
    this.#offset += Math.ceil((KREPIS_SCAN_ENTRY_HEADER_BYTES + keyLength + valueLength) / 8) * 8;
    this.#index++;
    return { done: false, value: entry };
  }

  /** Ends the scan (also called when it is exhausted). Idempotent. */
  close(): void {
    if (this.#done) return;
    this.#done = true;
    if (!this.#owner.closed) {
      this.#owner.native.symbols.krepis_store_scan_close(this.#handle);
    }
  }

  /** Ends the scan early. */
  return(): IteratorResult<StoreEntry, undefined> {
    this.close();
    return { done: true, value: undefined };
  }

  /** The scan itself (it is its own iterator). */
  [Symbol.iterator](): StoreScan {
    return this;
  }

  /** Ends the scan (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A live feed of changes under a prefix (`for await`), carried through a
 * kernel → JS ring: a slow consumer slows the feed, nothing is dropped.
 */
export class StoreWatch implements AsyncIterableIterator<StoreChange>, Disposable {
  readonly #ring: RingReader;
  readonly #iterator: AsyncIterator<{ tag: number; data: ReadonlyBytes }>;

  /** @internal */
  constructor(ring: RingReader) {
    // Changes are visible to watchers when applied, slightly before the
    // commit's promise resolves (see `Store.commit`).
    this.#ring = ring;
    this.#iterator = ring[Symbol.asyncIterator]() as AsyncIterator<
      { tag: number; data: ReadonlyBytes }
    >;
  }

  /** The next change (waits for one). */
  async next(): Promise<IteratorResult<StoreChange, undefined>> {
    const step = await this.#iterator.next();
    if (step.done) return { done: true, value: undefined };
    const { tag, data } = step.value;
    if ((tag & 0xff) === KREPIS_WATCH_OVERFLOW) {
      this.close();
      throw new ResourceExhaustedError(
        "store.watch fell more than 64 MiB of changes behind; the feed ended and changes were " +
          "dropped: re-read the data and watch again (and consume faster)",
      );
    }
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const keyLength = view.getUint32(0, true);
    const key = (data as Uint8Array).slice(4, 4 + keyLength);
    const hasValue = (tag & 0xff) === KREPIS_WATCH_PUT && (tag & KREPIS_WATCH_VALUE_OMITTED) === 0;
    return {
      done: false,
      value: {
        type: (tag & 0xff) === KREPIS_WATCH_PUT ? "put" : "delete",
        key,
        value: hasValue ? (data as Uint8Array).slice(4 + keyLength) : null,
      },
    };
  }

  /** Stops watching. */
  close(): void {
    this.#ring.close();
  }

  /** Stops watching (for `break` in `for await`). */
  return(): Promise<IteratorResult<StoreChange, undefined>> {
    this.close();
    return Promise.resolve({ done: true, value: undefined });
  }

  /** The watch itself (it is its own async iterator). */
  [Symbol.asyncIterator](): StoreWatch {
    return this;
  }

  /** Stops watching (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }
}
