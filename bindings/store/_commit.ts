/**
 * Results of the store's queued jobs (commits, flushes, undos): each is
 * submitted under a ticket with one fast call, and one pump per kernel
 * collects finished ones in batches, woken by the kernel's event queue (one
 * event per batch, never a blocked thread per job).
 *
 * @module
 */

import { CommitResult as CommitResultMessage } from "../_gen/proto/krepis/v1/store.ts";
import { KREPIS_COMPLETION_HEADER_BYTES } from "../_gen/symbols.ts";
import { EventKind } from "../_events.ts";
import { errorFromNative } from "../_native.ts";
import type { KernelOwner } from "../_owner.ts";
import { ClosedError } from "../errors.ts";

/** What a durable commit resolves to. */
export interface CommitResult {
  /** The transaction id (also the journal record's id). */
  readonly txId: number;
}

function commitResult(bytes: Uint8Array): CommitResult {
  const result = CommitResultMessage.decode(bytes);
  if (result.error) throw errorFromNative(result.error);
  return { txId: Number(result.txId) };
}

/**
 * Collects the results of submitted jobs, one batch per event, running only
 * while jobs are pending.
 */
export class CommitPump {
  readonly #owner: KernelOwner;
  readonly #pending = new Map<
    number,
    { resolve(r: CommitResult): void; reject(e: unknown): void }
  >();
  readonly #ticket = new BigUint64Array(1);
  #out = new Uint8Array(64 * 1024);
  #running = false;

  constructor(owner: KernelOwner) {
    this.#owner = owner;
  }

  /**
   * Queues a job with `submit`, which calls an export that writes the job's
   * ticket into its argument and returns a status; settles with the job's
   * durable outcome.
   */
  run(submit: (ticket: BigUint64Array<ArrayBuffer>) => number): Promise<CommitResult> {
    this.#owner.native.check(submit(this.#ticket));
    const ticket = Number(this.#ticket[0]);
    const promise = new Promise<CommitResult>((resolve, reject) => {
      this.#pending.set(ticket, { resolve, reject });
    });
    if (!this.#running) {
      this.#running = true;
      void this.#run();
    }
    return promise;
  }

  async #run(): Promise<void> {
    const { native, handle, events } = this.#owner;
    try {
      while (this.#pending.size > 0) {
        if (this.#owner.closed) {
          throw new ClosedError("the kernel closed before the commit finished");
        }
        const length = native.check(
          native.symbols.krepis_store_completions(handle, this.#out, this.#out.length),
        );
        if (length === 0) {
          // None ready: the next one posts an event.
          await events.wait(EventKind.completions, 0);
          continue;
        }
        const words = new DataView(this.#out.buffer, 0, length);
        let offset = 0;
        while (offset < length) {
          const ticket = Number(words.getBigUint64(offset, true));
          const size = words.getUint32(offset + 8, true);
          const body = this.#out.subarray(
            offset + KREPIS_COMPLETION_HEADER_BYTES,
            offset + KREPIS_COMPLETION_HEADER_BYTES + size,
          );
          offset += Math.ceil((KREPIS_COMPLETION_HEADER_BYTES + size) / 8) * 8;
          const waiter = this.#pending.get(ticket);
          if (waiter === undefined) continue;
          this.#pending.delete(ticket);
          try {
            waiter.resolve(commitResult(body));
          } catch (error) {
            waiter.reject(error);
          }
        }
      }
    } catch (error) {
      this.#failAll(error);
    } finally {
      this.#running = false;
    }
  }

  /** Resolves once every submitted job has settled. */
  async idle(): Promise<void> {
    while (this.#running || this.#pending.size > 0) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  #failAll(error: unknown): void {
    for (const waiter of this.#pending.values()) waiter.reject(error);
    this.#pending.clear();
  }
}
