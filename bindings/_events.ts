/**
 * The JS half of a transport's event queue (`ffi/src/events.rs`): one
 * `nonblocking` wait serves every link, listener and connect of a kernel,
 * however many there are, and runs only while something waits.
 *
 * @module
 */

import {
  KREPIS_EVENT_CONNECT,
  KREPIS_EVENT_LINK_CLOSED,
  KREPIS_EVENT_LISTENER,
  KREPIS_EVENT_RECORD_BYTES,
  KREPIS_EVENT_RING,
} from "./_gen/symbols.ts";
import type { KernelOwner } from "./_owner.ts";
import type { RingEventSource } from "./_ring.ts";

/** Event kinds (the kernel's `EVENT_*`). */
export const EventKind = {
  ring: KREPIS_EVENT_RING,
  listener: KREPIS_EVENT_LISTENER,
  connect: KREPIS_EVENT_CONNECT,
  linkClosed: KREPIS_EVENT_LINK_CLOSED,
} as const;

/** Events read per wait. */
const BATCH = 256;
/** Longest single native wait; the pump loops while anything waits. */
const WAIT_SLICE_MS = 1000;

/** Dispatches kernel events to the promises waiting for them. */
export class TransportEvents implements RingEventSource {
  readonly #owner: KernelOwner;
  readonly #handle: number;
  readonly #buffer = new Uint8Array(BATCH * KREPIS_EVENT_RECORD_BYTES);
  readonly #words = new Uint32Array(this.#buffer.buffer);
  readonly #waiters = new Map<number, (() => void)[]>();
  #pumping = false;
  #closed = false;

  constructor(owner: KernelOwner, handle: number) {
    this.#owner = owner;
    this.#handle = handle;
  }

  /** The kernel's transport handle. */
  get handle(): number {
    return this.#handle;
  }

  /**
   * Resolves at the next event of `kind` for `handle`, or when the transport
   * or kernel closes. Callers re-check their state afterwards (an event is a
   * hint, never a result).
   */
  wait(kind: number, handle: number): Promise<void> {
    if (this.#closed || this.#owner.closed) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    const key = kind * 2 ** 32 + handle;
    const list = this.#waiters.get(key);
    if (list === undefined) this.#waiters.set(key, [resolve]);
    else list.push(resolve);
    if (!this.#pumping) void this.#pump();
    return promise;
  }

  /** {@inheritDoc RingEventSource.waitRing} */
  waitRing(handle: number): Promise<void> {
    return this.wait(EventKind.ring, handle);
  }

  async #pump(): Promise<void> {
    this.#pumping = true;
    const symbols = this.#owner.native.symbols;
    try {
      while (this.#waiters.size > 0 && !this.#owner.closed) {
        const count = await symbols.krepis_transport_wait(
          this.#handle,
          this.#buffer,
          this.#buffer.length,
          WAIT_SLICE_MS,
        );
        if (count < 0) {
          this.#closed = true;
          break;
        }
        for (let index = 0; index < count; index++) {
          const key = this.#words[index * 2] * 2 ** 32 + this.#words[index * 2 + 1];
          const list = this.#waiters.get(key);
          if (list === undefined) continue;
          this.#waiters.delete(key);
          for (const resolve of list) resolve();
        }
      }
    } finally {
      this.#pumping = false;
      if (this.#closed || this.#owner.closed) this.#releaseAll();
    }
  }

  /** Wakes every waiter (the transport or kernel closed: they see it). */
  #releaseAll(): void {
    const lists = [...this.#waiters.values()];
    this.#waiters.clear();
    for (const list of lists) for (const resolve of list) resolve();
  }

  /** Stops the pump and wakes every waiter (kernel close). */
  close(): void {
    this.#closed = true;
    this.#releaseAll();
  }
}
