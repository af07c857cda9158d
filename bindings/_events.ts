/**
 * The JS half of a kernel's event queue (`ffi/src/events.rs`): everything JS
 * waits for in a kernel (rings, listeners, connects, closed links, finished
 * commits, finished guarded commands) is announced through one queue, drained by one pump per kernel.
 *
 * The pump takes events with a synchronous call. When there are none the
 * kernel marks JS parked, and the next event wakes it: the kernel's waker
 * thread calls a thread-safe callback (one wake of the event loop, no Deno
 * worker thread: the cheapest of the mechanisms `bench/wake.ts` compares).
 * While events keep coming the pump never parks: a busy JS side costs no wake
 * at all. It gives timers and I/O a turn at least every millisecond even
 * then.
 *
 * Deno creates thread-safe callbacks only with `--allow-ffi` for every path.
 * With `--allow-ffi` limited to the library, the pump parks in a
 * `nonblocking` call instead (a Deno worker thread wakes, then the event
 * loop: slower, and the same results).
 *
 * @module
 */

import { setImmediate } from "node:timers";
import {
  KREPIS_EVENT_COMPLETIONS,
  KREPIS_EVENT_CONNECT,
  KREPIS_EVENT_GUARD,
  KREPIS_EVENT_LINK_CLOSED,
  KREPIS_EVENT_LISTENER,
  KREPIS_EVENT_RECORD_BYTES,
  KREPIS_EVENT_RING,
} from "./_gen/symbols.ts";
import type { NativeLibrary } from "./_native.ts";

/** Event kinds (the kernel's `EVENT_*`). */
export const EventKind = {
  ring: KREPIS_EVENT_RING,
  listener: KREPIS_EVENT_LISTENER,
  connect: KREPIS_EVENT_CONNECT,
  linkClosed: KREPIS_EVENT_LINK_CLOSED,
  completions: KREPIS_EVENT_COMPLETIONS,
  guard: KREPIS_EVENT_GUARD,
} as const;

/** Events taken per call. */
const BATCH = 256;
/** Longest single nonblocking wait (without a callback); the pump loops. */
const WAIT_SLICE_MS = 1000;
/** Longest run of back-to-back batches before timers and I/O get a turn. */
const SLICE_MS = 1;

/**
 * Longest spin before parking, in microseconds: a small multiple of what a
 * wake costs (17–70 µs one way, ~35 µs of CPU: `bench/wake.ts`), so spinning
 * never costs much more than the wake it may save (spin-then-park). With 50,
 * half the same-process KNUL replies came after the spin and paid both.
 */
const SPIN_MICROS = 100;
/** A pump spins only when its last event came this recently (ms). */
const SPIN_WINDOW_MS = 1;

/**
 * The process's spin, shared by every kernel's pump: pumps that found their
 * queue empty shortly after an event register here; once promise callbacks
 * have run (they may send what the reply answers), one native busy-wait
 * watches every kernel's pushes, and each pump then polls again or parks.
 */
const spinner = {
  native: null as NativeLibrary | null,
  /** Whether this process may use two cores, and when that was asked. */
  allowed: null as boolean | null,
  checkedAt: 0,
  waiting: [] as ((timedOut: boolean) => void)[],
  scheduled: false,
  /** The process's push count when the last spin returned. */
  seen: 0,
};

function runSpin(): void {
  spinner.scheduled = false;
  const waiting = spinner.waiting;
  spinner.waiting = [];
  const before = spinner.seen;
  spinner.seen = spinner.native!.symbols.krepis_events_spin(before, SPIN_MICROS);
  const timedOut = spinner.seen === before;
  for (const resolve of waiting) resolve(timedOut);
}

/** Whether pumps spin here: not where the process may use one core only (asked once a second). */
function spinAllowed(native: NativeLibrary): boolean {
  const now = performance.now();
  if (spinner.allowed === null || now - spinner.checkedAt > 1000) {
    spinner.allowed = native.symbols.krepis_events_spin_allowed() === 1;
    spinner.checkedAt = now;
  }
  return spinner.allowed;
}

/** Resolves after a spin: false when some kernel queued an event meanwhile. */
function spinTurn(native: NativeLibrary): Promise<boolean> {
  const { promise, resolve } = Promise.withResolvers<boolean>();
  spinner.native = native;
  spinner.waiting.push(resolve);
  if (!spinner.scheduled) {
    spinner.scheduled = true;
    setImmediate(runSpin);
  }
  return promise;
}

/** Resolves after the event loop ran timers and I/O once (a macrotask). */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * For a loop that may keep finding work without ever waiting: `next()` lets
 * promise callbacks run, and timers and I/O too at least every millisecond.
 */
export class TurnBudget {
  #start = performance.now();

  /** The loop waited (the event loop ran): a new slice starts. */
  reset(): void {
    this.#start = performance.now();
  }

  /** Yields: a microtask while the slice lasts, else a macrotask. */
  async next(): Promise<void> {
    if (performance.now() - this.#start < SLICE_MS) {
      await Promise.resolve();
    } else {
      await nextTurn();
      this.reset();
    }
  }
}

const WAKE_DEFINITION = { parameters: [], result: "void" } as const;
type WakeCallback = Deno.UnsafeCallback<typeof WAKE_DEFINITION>;

/**
 * The thread-safe callback the kernel's waker thread calls, unreferenced
 * (only a pump with something to wait for keeps the process alive), or null
 * when Deno refuses to create one (`--allow-ffi` limited to some paths).
 */
function wakeCallback(
  wake: () => void,
): WakeCallback | null {
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
  try {
    const callback = Deno.UnsafeCallback.threadSafe(WAKE_DEFINITION, wake);
    callback.unref();
    return callback;
  } catch {
    return null;
  }
}

/** Dispatches a kernel's events to the promises waiting for them. */
export class KernelEvents {
  readonly #native: NativeLibrary;
  /** The wake callback, or null when Deno refused to create one (scoped --allow-ffi). */
  readonly #callback:
    | WakeCallback
    | null;
  readonly #buffer = new Uint8Array(BATCH * KREPIS_EVENT_RECORD_BYTES);
  readonly #words = new Uint32Array(this.#buffer.buffer);
  /** `kind * 2^32 + handle` → resolvers of the promises waiting for it. */
  readonly #waiters = new Map<number, (() => void)[]>();
  #kernel = -1;
  /** Waiters that asked the pump to spin before it parks. */
  #spinWaiters = 0;
  /** When the pump last found events (performance.now()). */
  #lastEvent = -Infinity;
  #wake: (() => void) | null = null;
  #pumping = false;
  #referenced = false;
  #closed = false;

  /** Creates the wake callback; {@linkcode attach} to the kernel once it is open. */
  constructor(native: NativeLibrary) {
    this.#native = native;
    this.#callback = wakeCallback(() => {
      const wake = this.#wake;
      this.#wake = null;
      wake?.();
    });
  }

  /** The callback `krepis_kernel_open` registers (null: JS waits with a nonblocking call). */
  get pointer(): Deno.PointerValue {
    return this.#callback?.pointer ?? null;
  }

  /** Binds the queue to the opened kernel. */
  attach(kernel: number): void {
    this.#kernel = kernel;
  }

  /**
   * Resolves at the next event of `kind` for `handle`, or when the kernel
   * closes. An event is a hint, never a result: callers re-check their state.
   */
  wait(kind: number, handle: number, spin = false): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    const key = kind * 2 ** 32 + handle;
    let done = resolve;
    if (spin) {
      this.#spinWaiters++;
      done = () => {
        this.#spinWaiters--;
        resolve();
      };
    }
    const list = this.#waiters.get(key);
    if (list === undefined) this.#waiters.set(key, [done]);
    else list.push(done);
    if (!this.#pumping) void this.#pump();
    return promise;
  }

  /**
   * Resolves at the next event of ring `handle` (records to read, room to
   * write, closed); `spin`: the event is a reply due soon, worth spinning for.
   */
  waitRing(handle: number, spin = false): Promise<void> {
    return this.wait(EventKind.ring, handle, spin);
  }

  #reference(on: boolean): void {
    if (on === this.#referenced || this.#callback === null) return;
    this.#referenced = on;
    if (on) this.#callback.ref();
    else this.#callback.unref();
  }

  /** Sleeps until the kernel has events (or closes). */
  async #park(parked: Promise<void>): Promise<void> {
    if (this.#callback !== null) {
      await parked;
      return;
    }
    // No callback: a nonblocking call parks a Deno worker thread instead.
    while (!this.#closed) {
      const status = await this.#native.symbols.krepis_events_wait(this.#kernel, WAIT_SLICE_MS);
      if (status !== 0) return;
    }
  }

  async #pump(): Promise<void> {
    this.#pumping = true;
    this.#reference(true);
    const symbols = this.#native.symbols;
    try {
      const turns = new TurnBudget();
      while (this.#waiters.size > 0 && !this.#closed) {
        let count: number;
        if (
          this.#spinWaiters > 0 && performance.now() - this.#lastEvent < SPIN_WINDOW_MS &&
          spinAllowed(this.#native)
        ) {
          // Events came moments ago: more are likely before a wake could
          // arrive. Look without parking, then spin; when the spin saw
          // nothing, the next look parks.
          count = symbols.krepis_events_poll(this.#kernel, this.#buffer, this.#buffer.length);
          if (count < 0) break; // the kernel is closed
          if (count === 0) {
            if (await spinTurn(this.#native)) this.#lastEvent = -Infinity;
            continue;
          }
        } else {
          // The resolver exists before the kernel can call the callback.
          const parked = new Promise<void>((resolve) => this.#wake = resolve);
          count = symbols.krepis_events_take(this.#kernel, this.#buffer, this.#buffer.length);
          if (count < 0) break; // the kernel is closed
          if (count === 0) {
            // Parked: the next event wakes the pump.
            await this.#park(parked);
            turns.reset();
            continue;
          }
        }
        this.#wake = null;
        this.#lastEvent = performance.now();
        for (let index = 0; index < count; index++) {
          const key = this.#words[index * 2] * 2 ** 32 + this.#words[index * 2 + 1];
          const list = this.#waiters.get(key);
          if (list === undefined) continue;
          this.#waiters.delete(key);
          for (const resolve of list) resolve();
        }
        // Let the woken waiters run; now and then let timers and I/O run too.
        await turns.next();
      }
    } finally {
      this.#pumping = false;
      this.#reference(false);
      if (this.#closed) this.#releaseAll();
    }
  }

  /**
   * Stops the kernel's calls of the callback for good and lets the calls in
   * flight run (each needs this thread): after this the kernel may close and
   * then the callback.
   */
  async quiesceForClose(): Promise<void> {
    while (this.#native.symbols.krepis_events_quiesce(this.#kernel) > 0) await nextTurn();
  }

  #releaseAll(): void {
    const lists = [...this.#waiters.values()];
    this.#waiters.clear();
    for (const list of lists) for (const resolve of list) resolve();
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** The kernel closed: wakes every waiter and frees the callback. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#releaseAll();
    this.#callback?.close();
  }
}
