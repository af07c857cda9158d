/**
 * Commit results: the pump that collects submitted commits' outcomes (one
 * `nonblocking` wait per batch of finished commits) and the call that reads
 * one result of a synchronous-looking export (flush, undo).
 *
 * @module
 */

import { CommitResult as CommitResultMessage } from "../_gen/proto/krepis/v1/store.ts";
import { ErrorCode } from "../_gen/proto/krepis/v1/error.ts";
import { KREPIS_COMPLETION_HEADER_BYTES } from "../_gen/symbols.ts";
import { errorFromNative } from "../_native.ts";
import type { KernelOwner } from "../_owner.ts";
import { ClosedError, InternalError } from "../errors.ts";

/** What a durable commit resolves to. */
export interface CommitResult {
  /** The transaction id (also the journal record's id). */
  readonly txId: number;
}

const RESULT_BYTES = 16 * 1024;

function commitResult(bytes: Uint8Array): CommitResult {
  const result = CommitResultMessage.decode(bytes);
  if (result.error) throw errorFromNative(result.error);
  return { txId: Number(result.txId) };
}

/** Runs a nonblocking export that writes a CommitResult into an output buffer. */
export async function resultCall(
  call: (out: Uint8Array<ArrayBuffer>, cap: number) => Promise<number>,
  check: (status: number) => number,
): Promise<CommitResult> {
  // Each call owns its buffer: commits run concurrently.
  const out = new Uint8Array(RESULT_BYTES);
  const length = check(await call(out, out.length));
  if (length > out.length) {
    // The operation already happened; only an absurdly long error message
    // could get here (the kernel bounds them), so this is a bug.
    throw new InternalError(`a kernel result of ${length} bytes exceeded ${RESULT_BYTES}`);
  }
  return commitResult(out.subarray(0, length));
}

/**
 * Collects the results of submitted commits: one `nonblocking` wait per
 * batch of finished commits (never one blocked thread per commit), running
 * only while commits are pending.
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

  /** Submits an encoded CommitRequest on `tree`; settles with its durable outcome. */
  submit(tree: number, request: Uint8Array<ArrayBuffer>): Promise<CommitResult> {
    const { native } = this.#owner;
    native.check(
      native.symbols.krepis_store_commit_submit(tree, request, request.length, this.#ticket),
    );
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
    const { native, handle } = this.#owner;
    try {
      while (this.#pending.size > 0) {
        const length = await native.symbols.krepis_store_completions(
          handle,
          this.#out,
          this.#out.length,
          1_000,
        );
        if (length < 0) {
          // A nonblocking call cannot read the kernel's last error (it ran on
          // another thread): the status code is all there is.
          this.#failAll(
            length === -ErrorCode.ERROR_CODE_CLOSED
              ? new ClosedError("the kernel closed before the commit finished")
              : new InternalError(`collecting commit results failed with status ${length}`),
          );
          return;
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

  /** Resolves once every submitted commit has settled. */
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
