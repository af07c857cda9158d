/**
 * The transaction journal of the kernel's store (`kernel.journal`): every
 * commit's record (tx id, time, context, keys with previous and new values),
 * read in batches, and undo as a new journaled transaction.
 *
 * @module
 */

import { JournalBatch, JournalQuery, UndoRequest } from "../_gen/proto/krepis/v1/store.ts";
import { contextMessage } from "../_context.ts";
import type { KernelOwner } from "../_owner.ts";
import type { Context } from "../context.ts";
import { InvalidArgumentError } from "../errors.ts";
import type { CommitPump, CommitResult } from "./_commit.ts";

/** A record of the transaction journal. */
export interface JournalRecord {
  /** Transaction id. */
  readonly txId: number;
  /** When it committed. */
  readonly time: Date;
  /** The context the commit was made with, if any. */
  readonly ctx: { requestId: string; tenantId: string | null; traceId: string | null } | null;
  /** Every key touched, with its value before and after (`null` = absent). */
  readonly changes: readonly {
    tree: string;
    key: Uint8Array;
    previous: Uint8Array | null;
    value: Uint8Array | null;
  }[];
  /** The transaction this one undid, if it is an undo. */
  readonly undoOf: number | null;
}

/** Options of {@linkcode Journal.read}. */
export interface JournalReadOptions {
  /** First transaction id (inclusive). Default 1. */
  since?: number;
  /** Only records whose context has this tenant. */
  tenantId?: string;
}

/**
 * The transaction journal of the kernel's store: `kernel.journal`.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: "./data" });
 * const { txId } = await kernel.store.commit([{ type: "put", key: "k", value: "v" }]);
 * for (const record of kernel.journal.read({ since: txId })) console.log(record.changes);
 * await kernel.journal.undo(txId);
 * ```
 */
export class Journal {
  readonly #owner: KernelOwner;
  readonly #commits: CommitPump;

  /** @internal Use `kernel.journal`. */
  constructor(owner: KernelOwner, commits: CommitPump) {
    this.#owner = owner;
    this.#commits = commits;
  }

  /** Streams records from `since` on (in batches, never all at once). */
  *read(options: JournalReadOptions = {}): Generator<JournalRecord, void, undefined> {
    let since = options.since ?? 1;
    if (!Number.isSafeInteger(since) || since < 0) {
      throw new InvalidArgumentError(`since must be a transaction id, got ${since}`, {
        details: { field: "since" },
      });
    }
    const { native } = this.#owner;
    let out = new Uint8Array(256 * 1024);
    while (since !== 0) {
      this.#owner.assertOpen("journal.read");
      const query = JournalQuery.encode({
        since: BigInt(since),
        tenantId: options.tenantId ?? "",
        limit: 0,
      }).finish();
      const read = () =>
        native.check(
          native.symbols.krepis_journal_read(
            this.#owner.handle,
            query,
            query.length,
            out,
            out.length,
          ),
        );
      let length = read();
      if (length > out.length) {
        // The kernel reported the size it needs: grow once and ask again.
        out = new Uint8Array(length);
        length = read();
      }
      const batch = JournalBatch.decode(out.subarray(0, length));
      for (const record of batch.records) {
        yield {
          txId: Number(record.txId),
          time: new Date(Number(record.timeUnixMs)),
          ctx: record.ctx
            ? {
              requestId: record.ctx.requestId,
              tenantId: record.ctx.tenantId || null,
              traceId: record.ctx.traceId || null,
            }
            : null,
          changes: record.changes.map((change) => ({
            tree: change.tree,
            key: change.key,
            previous: change.previous ?? null,
            value: change.value ?? null,
          })),
          undoOf: record.undoOf === 0n ? null : Number(record.undoOf),
        };
      }
      since = Number(batch.next);
    }
  }

  /**
   * Reverts transaction `txId` as a new durable, journaled transaction.
   * Refuses with `ConflictError` (naming the later transaction) when a later
   * change touched one of its keys; `NotFoundError` when it is not in the journal.
   */
  async undo(txId: number, options: { ctx?: Context } = {}): Promise<CommitResult> {
    this.#owner.assertOpen("journal.undo");
    if (!Number.isSafeInteger(txId) || txId <= 0) {
      throw new InvalidArgumentError(`txId must be a positive integer, got ${txId}`, {
        details: { field: "txId" },
      });
    }
    const request = UndoRequest.encode({ txId: BigInt(txId), ctx: contextMessage(options.ctx) })
      .finish();
    const { native, handle } = this.#owner;
    return await this.#commits.run((ticket) =>
      native.symbols.krepis_journal_undo(handle, request, request.length, ticket)
    );
  }
}
