/**
 * The JS side of the kernel's SPSC rings (layout and protocol: ffi/src/ring.rs;
 * the constants come from the generated header, so both sides agree).
 *
 * A ring's memory is mapped once. Reading a record is array indexing; the
 * consumer publishes its cursor once per batch and calls into the kernel only
 * when the kernel side sleeps (`native_waiting`). Waiting for the kernel goes
 * through the kernel's event queue (`_events.ts`): arm the ring, re-check,
 * wait for its event; never a call per record.
 *
 * @module
 */

import {
  KREPIS_RING_CAPACITY,
  KREPIS_RING_CLOSED,
  KREPIS_RING_HEAD,
  KREPIS_RING_HEADER_BYTES,
  KREPIS_RING_JS_ARMED,
  KREPIS_RING_MAX_CAPACITY,
  KREPIS_RING_MIN_CAPACITY,
  KREPIS_RING_NATIVE_WAITING,
  KREPIS_RING_PAD,
  KREPIS_RING_RECORD_HEADER_BYTES,
  KREPIS_RING_TAIL,
} from "./_gen/symbols.ts";
import { RingStats } from "./_gen/proto/krepis/v1/buffers.ts";
import type { KernelOwner } from "./_owner.ts";
import type { ReadonlyBytes } from "./_bytes.ts";
import { ClosedError, InvalidArgumentError } from "./errors.ts";

const HEAD = KREPIS_RING_HEAD >> 2;
const TAIL = KREPIS_RING_TAIL >> 2;
const NATIVE_WAITING = KREPIS_RING_NATIVE_WAITING >> 2;
const CLOSED = KREPIS_RING_CLOSED >> 2;
const JS_ARMED = KREPIS_RING_JS_ARMED >> 2;
const HEADER_WORDS = KREPIS_RING_HEADER_BYTES >> 2;
const RECORD_HEADER = KREPIS_RING_RECORD_HEADER_BYTES;
const PAD = KREPIS_RING_PAD;

/** Which side produces. */
export type RingDirection = "toJs" | "toKernel";

/** Options of {@linkcode openRing}. */
export interface RingOptions {
  /** Data bytes: a power of two from 64 B to 1 GiB. */
  capacity: number;
  direction: RingDirection;
}

/** Bytes a record with `length` payload bytes occupies. */
export function recordSize(length: number): number {
  return RECORD_HEADER + ((length + 7) & ~7);
}

/** Called by `drain` for each record: the payload is `data[offset, offset + length)`. */
export type RecordVisitor = (data: Uint8Array, offset: number, length: number, tag: number) => void;

/**
 * Closes rings whose memory became unreachable without `close()`. Registered
 * on the mapped ArrayBuffer, not on the ring object: views of the data (a
 * record's `data`, `ring.data`) may outlive the ring object.
 */
const leaks = new FinalizationRegistry<{ owner: KernelOwner; handle: number }>(
  ({ owner, handle }) => {
    owner.forget(handle);
    if (!owner.closed) owner.native.symbols.krepis_ring_close(handle);
  },
);

abstract class RingEnd {
  /** Data capacity in bytes. */
  readonly capacity: number;
  /** Largest payload one record can carry (`capacity - 8`). */
  readonly maxRecordBytes: number;
  protected readonly owner: KernelOwner;
  protected readonly handle: number;
  protected readonly memory: ArrayBuffer;
  /** Header words (cursors, flags). */
  protected readonly words: Uint32Array<ArrayBuffer>;
  /** The data area: records live here. */
  readonly data: Uint8Array<ArrayBuffer>;
  /** The data area as u32 words (record headers). */
  protected readonly dataWords: Uint32Array<ArrayBuffer>;
  protected readonly mask: number;
  /**
   * Whether a wait on this ring lets the event pump spin before it parks
   * (`_events.ts`): worth it where the record is a reply due soon (a link's
   * packets), not where it comes whenever a client sends (HTTP requests:
   * spinning there only takes the core from the kernel's workers).
   */
  spinWhileWaiting = false;
  #closed = false;

  constructor(owner: KernelOwner, handle: number, memory: ArrayBuffer, capacity: number) {
    this.owner = owner;
    this.handle = handle;
    this.memory = memory;
    this.capacity = capacity;
    this.maxRecordBytes = capacity - RECORD_HEADER;
    this.words = new Uint32Array(memory, 0, HEADER_WORDS);
    this.data = new Uint8Array(memory, KREPIS_RING_HEADER_BYTES, capacity);
    this.dataWords = new Uint32Array(memory, KREPIS_RING_HEADER_BYTES, capacity >> 2);
    this.mask = capacity - 1;
    leaks.register(memory, { owner, handle }, this);
  }

  /** True once this end closed the ring, the kernel side closed it, or the kernel closed. */
  get closed(): boolean {
    return this.#closed || this.owner.closed || Atomics.load(this.words, CLOSED) !== 0;
  }

  /** The kernel's handle of this ring (for kernel APIs that feed or drain it). */
  get nativeHandle(): number {
    return this.handle;
  }

  /** True once this end or the kernel closed: its mapping is gone. */
  get detached(): boolean {
    return this.#closed || this.owner.closed;
  }

  /** @throws {ClosedError} once this end or the kernel closed. */
  protected assertUsable(operation: string): void {
    if (this.detached) throw new ClosedError(`${operation}: the ring is closed`);
  }

  /** Wakes the kernel side if it sleeps; at most one fast call. */
  protected notifyKernel(): void {
    if (Atomics.load(this.words, NATIVE_WAITING) !== 0) {
      this.owner.native.symbols.krepis_ring_notify(this.handle);
    }
  }

  /** True when the JS side can go on: a record to read, or `need` free bytes. */
  protected abstract readyFor(need: number): boolean;

  /**
   * Waits through the kernel's event queue: arm (the kernel then posts one
   * event after it moves its cursor), re-check so no wake-up is lost, wait.
   * True when ready, false on close or after `timeoutMs`.
   */
  protected async waitNative(need: number, timeoutMs: number): Promise<boolean> {
    const deadline = timeoutMs === Infinity ? Infinity : performance.now() + timeoutMs;
    while (!this.detached) {
      Atomics.store(this.words, JS_ARMED, 1);
      if (this.readyFor(need)) {
        Atomics.store(this.words, JS_ARMED, 0);
        return true;
      }
      if (this.closed) return false;
      const event = this.owner.events.waitRing(this.handle, this.spinWhileWaiting);
      if (deadline === Infinity) {
        await event;
        continue;
      }
      const left = deadline - performance.now();
      if (left <= 0) return false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        event,
        new Promise<void>((resolve) => timer = setTimeout(resolve, left)),
      ]);
      clearTimeout(timer);
    }
    return false;
  }

  /** Counters of this ring, read from the kernel. */
  stats(): RingStats {
    this.assertUsable("ring.stats");
    const native = this.owner.native;
    return RingStats.decode(
      native.readOutput((out, cap) => native.symbols.krepis_ring_stats(this.handle, out, cap)),
    );
  }

  /** Closes the ring: detaches its views and frees it. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    leaks.unregister(this);
    if (this.owner.closed) return;
    this.owner.unmap(this.handle, this.memory);
    this.owner.native.check(this.owner.native.symbols.krepis_ring_close(this.handle));
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * One record handed out by {@linkcode RingReader.read}: a view into the ring,
 * valid until the next `read`/`drain` or `release()`; afterwards `data` throws.
 */
export class RingRecord {
  readonly #reader: RingReader;
  readonly #generation: number;
  /** Where the payload starts in the reader's `data`. */
  readonly offset: number;
  /** Payload length in bytes. */
  readonly length: number;
  /** The record's tag (set by the producer). */
  readonly tag: number;

  constructor(reader: RingReader, generation: number, offset: number, length: number, tag: number) {
    this.#reader = reader;
    this.#generation = generation;
    this.offset = offset;
    this.length = length;
    this.tag = tag;
  }

  /** True while the view is valid. */
  get valid(): boolean {
    return this.#reader.generation === this.#generation && !this.#reader.detached;
  }

  /** The payload (zero-copy, read-only). @throws {ClosedError} once invalid. */
  get data(): ReadonlyBytes {
    if (!this.valid) {
      throw new ClosedError("RingRecord.data: the record was released (views last one iteration)");
    }
    return this.#reader.data.subarray(this.offset, this.offset + this.length) as ReadonlyBytes;
  }

  /** Gives the record's space back to the producer now. */
  release(): void {
    if (this.valid) this.#reader.releaseCurrent();
  }
}

/** The JS end of a kernel → JS ring: JS consumes. */
export class RingReader extends RingEnd implements AsyncIterable<RingRecord> {
  #tail: number;
  #published: number;
  #generation = 0;

  constructor(owner: KernelOwner, handle: number, memory: ArrayBuffer, capacity: number) {
    super(owner, handle, memory, capacity);
    this.#tail = Atomics.load(this.words, TAIL);
    this.#published = this.#tail;
  }

  /** Increments whenever handed-out record views become invalid. */
  get generation(): number {
    return this.#generation;
  }

  protected readyFor(_need: number): boolean {
    return Atomics.load(this.words, HEAD) !== this.#tail;
  }

  /** Bytes ready to read now (0 once closed). */
  get available(): number {
    if (this.detached) return 0;
    return (Atomics.load(this.words, HEAD) - this.#tail) >>> 0;
  }

  #publish(): void {
    if (this.#published === this.#tail) return;
    this.#published = this.#tail;
    Atomics.store(this.words, TAIL, this.#tail);
    this.notifyKernel();
  }

  /**
   * Visits every record available now (up to `maxRecords`) and frees their
   * space with one store. The visitor gets the ring's data array and the
   * payload's offset and length: valid only during the call. Returns the count.
   */
  drain(visit: RecordVisitor, maxRecords: number = Infinity): number {
    this.assertUsable("ring.drain");
    this.#generation++;
    const head = Atomics.load(this.words, HEAD);
    const data = this.data;
    const words = this.dataWords;
    const mask = this.mask;
    let tail = this.#tail;
    let count = 0;
    while (tail !== head && count < maxRecords) {
      const offset = tail & mask;
      const length = words[offset >> 2];
      if (length === PAD) {
        tail = (tail + this.capacity - offset) >>> 0;
        continue;
      }
      visit(data, offset + RECORD_HEADER, length, words[(offset >> 2) + 1]);
      tail = (tail + recordSize(length)) >>> 0;
      count++;
    }
    this.#tail = tail;
    this.#publish();
    return count;
  }

  /**
   * The next record, or `null` when none is available now. The previous
   * record's view becomes invalid. Space is given back in batches.
   */
  read(): RingRecord | null {
    this.assertUsable("ring.read");
    this.#generation++;
    const head = Atomics.load(this.words, HEAD);
    while (this.#tail !== head) {
      const offset = this.#tail & this.mask;
      const length = this.dataWords[offset >> 2];
      if (length === PAD) {
        this.#tail = (this.#tail + this.capacity - offset) >>> 0;
        continue;
      }
      const record = new RingRecord(
        this,
        this.#generation,
        offset + RECORD_HEADER,
        length,
        this.dataWords[(offset >> 2) + 1],
      );
      this.#tail = (this.#tail + recordSize(length)) >>> 0;
      // The record's bytes stay reserved until the cursor is published: at
      // the latest when the reader runs dry or a quarter of the ring is read.
      if (((this.#tail - this.#published) >>> 0) >= this.capacity >>> 2) {
        this.#published = (this.#tail - recordSize(length)) >>> 0;
        Atomics.store(this.words, TAIL, this.#published);
        this.notifyKernel();
      }
      return record;
    }
    this.#publish();
    return null;
  }

  /** @internal Frees the space of the record `read` returned last. */
  releaseCurrent(): void {
    this.#generation++;
    this.#publish();
  }

  /**
   * Waits until a record is available (true), the timeout passes or the ring
   * closes (false). One native wait, however many records then arrive.
   */
  async wait(timeoutMs: number = Infinity): Promise<boolean> {
    this.assertUsable("ring.wait");
    // Waiting gives back the space of the record `read` returned last, so
    // its view must stop being valid first.
    this.#generation++;
    this.#publish();
    if (this.available !== 0) return true;
    if (this.closed) return false;
    return await this.waitNative(0, timeoutMs);
  }

  /** Records until the ring closes; each view is valid for one iteration. */
  async *[Symbol.asyncIterator](): AsyncGenerator<RingRecord> {
    while (!this.detached) {
      const record = this.read();
      if (record !== null) {
        yield record;
        continue;
      }
      if (this.closed) {
        // The kernel publishes its last records before it sets `closed`:
        // drain once more so none are lost, then stop.
        if (this.available === 0) return;
        continue;
      }
      await this.wait();
    }
  }
}

/** The JS end of a JS → kernel ring: JS produces. */
export class RingWriter extends RingEnd {
  #head: number;

  constructor(owner: KernelOwner, handle: number, memory: ArrayBuffer, capacity: number) {
    super(owner, handle, memory, capacity);
    this.#head = Atomics.load(this.words, HEAD);
  }

  protected readyFor(need: number): boolean {
    return this.free >= need;
  }

  /** Free bytes now (as seen by the writer; 0 once closed). */
  get free(): number {
    if (this.detached) return 0;
    return this.capacity - ((this.#head - Atomics.load(this.words, TAIL)) >>> 0);
  }

  #checkLength(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.maxRecordBytes) {
      throw new InvalidArgumentError(
        `a record of ${length} bytes does not fit this ring (at most ${this.maxRecordBytes} bytes)`,
        { details: { reason: "record_too_large", maxRecordBytes: String(this.maxRecordBytes) } },
      );
    }
  }

  /**
   * Reserves a record of `length` bytes and returns the offset of its payload
   * in {@linkcode data} (write the payload there, zero-copy), or -1 when the
   * ring is full now (would block). Visible to the kernel after `flush()`.
   */
  reserve(length: number, tag: number = 0): number {
    this.assertUsable("ring.reserve");
    this.#checkLength(length);
    const size = recordSize(length);
    let offset = this.#head & this.mask;
    const contiguous = this.capacity - offset;
    if (size > contiguous) {
      if (this.free < contiguous) return -1;
      this.dataWords[offset >> 2] = PAD;
      this.#head = (this.#head + contiguous) >>> 0;
      offset = 0;
    }
    if (this.free < size) return -1;
    this.dataWords[offset >> 2] = length;
    this.dataWords[(offset >> 2) + 1] = tag >>> 0;
    this.#head = (this.#head + size) >>> 0;
    return offset + RECORD_HEADER;
  }

  /** Copies `bytes` in as one record; false when the ring is full now (would block). */
  tryWrite(bytes: Uint8Array, tag: number = 0): boolean {
    const offset = this.reserve(bytes.length, tag);
    if (offset < 0) return false;
    this.data.set(bytes, offset);
    return true;
  }

  /** Publishes every reserved record with one store and wakes the kernel if it sleeps. */
  flush(): void {
    this.assertUsable("ring.flush");
    Atomics.store(this.words, HEAD, this.#head);
    this.notifyKernel();
  }

  /**
   * Publishes what was reserved, then waits until `need` bytes are free:
   * true when they are, false when the ring closed.
   */
  async waitForSpace(need: number): Promise<boolean> {
    if (this.detached) return false;
    this.flush();
    return await this.waitNative(Math.min(need, this.capacity), Infinity);
  }

  /** Writes one record, waiting (without spinning) while the ring is full. */
  async write(bytes: Uint8Array, tag: number = 0): Promise<void> {
    while (!this.tryWrite(bytes, tag)) {
      this.flush();
      const need = Math.min(recordSize(bytes.length), this.capacity);
      if (!(await this.waitNative(need, Infinity)) && this.closed) {
        throw new ClosedError("ring.write: the ring is closed");
      }
    }
  }
}

/** Creates a ring owned by the kernel and maps it (SDK-internal). */
export function openRing(
  owner: KernelOwner,
  options: RingOptions & { direction: "toJs" },
): RingReader;
export function openRing(
  owner: KernelOwner,
  options: RingOptions & { direction: "toKernel" },
): RingWriter;
export function openRing(owner: KernelOwner, options: RingOptions): RingReader | RingWriter;
export function openRing(owner: KernelOwner, options: RingOptions): RingReader | RingWriter {
  owner.assertOpen("openRing");
  const { capacity, direction } = options;
  if (
    !Number.isInteger(capacity) || capacity < KREPIS_RING_MIN_CAPACITY ||
    capacity > KREPIS_RING_MAX_CAPACITY || (capacity & (capacity - 1)) !== 0
  ) {
    throw new InvalidArgumentError(
      `ring capacity must be a power of two from ${KREPIS_RING_MIN_CAPACITY} to ${KREPIS_RING_MAX_CAPACITY}, got ${capacity}`,
      { details: { field: "capacity" } },
    );
  }
  const out = new BigUint64Array(2);
  const native = owner.native;
  native.check(
    native.symbols.krepis_ring_create(owner.handle, capacity, direction === "toJs" ? 1 : 2, out),
  );
  const handle = Number(out[0]);
  const memory = owner.map(handle, out[1], KREPIS_RING_HEADER_BYTES + capacity);
  if (new Uint32Array(memory, KREPIS_RING_CAPACITY, 1)[0] !== capacity) {
    throw new InvalidArgumentError("ring layout mismatch (capacity word)");
  }
  return direction === "toJs"
    ? new RingReader(owner, handle, memory, capacity)
    : new RingWriter(owner, handle, memory, capacity);
}
