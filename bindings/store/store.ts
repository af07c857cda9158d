/**
 * The store: a durable key-value store owned by the kernel (sled, in
 * `<dataDir>/store`), with named trees, streaming scans, change feeds and
 * atomic, journaled, durable transactions.
 *
 * - `get`/`has`/`put`/`delete` are synchronous and take microseconds. Single
 *   `put`/`delete` are not journaled and become durable when the store's
 *   pages are flushed (within ~0.5 s in the background, or by `flush()`); see
 *   {@linkcode Store.put} for what that means when a flush fails.
 * - `commit(ops, { ctx, checks })` applies a batch atomically, appends a
 *   journal record (tx id, time, context, keys, previous and new values) in
 *   the same atomic step, and resolves only once durable. Concurrent commits
 *   share one flush (group commit).
 *
 * On a cluster store (`store: { cluster }`, an etcd prefix shared by every
 * kernel opened on it) reads are served by a local replica kept current from
 * an etcd watch ({@linkcode Store.replica} says which revision it reflects;
 * {@linkcode Store.sync} and {@linkcode Store.getLinearizable} wait for the
 * cluster), commits are etcd transactions, and single `put`/`delete` are
 * refused with `UnsupportedError` (use `commit`).
 *
 * The rest of the store's folder: `_feeds.ts` (scans and watches),
 * `_commit.ts` (collecting commit results), `_commit_codec.ts` (the commit
 * request encoder) and `journal.ts` (`kernel.journal`).
 *
 * @module
 */

import {
  ReplicaState as ReplicaStateMessage,
  ScanOptions as ScanOptionsMessage,
} from "../_gen/proto/krepis/v1/store.ts";
import { Context as ContextMessage } from "../_gen/proto/krepis/v1/context.ts";
import type { ReadonlyBytes } from "../_bytes.ts";
import { checkOptions, invalidArgument } from "../_check.ts";
import { contextMessage, encodedContext } from "../_context.ts";
import type { KernelOwner } from "../_owner.ts";
import { openRing } from "../_ring.ts";
import { adoptKernelBuffer, type Buffers, type SharedBuffer } from "../buffers.ts";
import type { Context } from "../context.ts";
import { ClosedError, InvalidArgumentError } from "../errors.ts";
import { encodeCommitRequest } from "./_commit_codec.ts";
import type { CommitPump, CommitResult } from "./_commit.ts";
import { StoreScan, StoreWatch } from "./_feeds.ts";

export type { CommitResult };
export { type StoreChange, type StoreEntry, StoreScan, StoreWatch } from "./_feeds.ts";

/** A key: bytes, or a string (stored as UTF-8). */
export type StoreKey = Uint8Array | string;
/** A value: bytes, or a string (stored as UTF-8). */
export type StoreBytes = Uint8Array | string;

/** A write of {@linkcode Store.commit}. `tree` defaults to the store's tree. */
export type CommitOp =
  | { type: "put"; key: StoreKey; value: StoreBytes; tree?: string }
  | { type: "delete"; key: StoreKey; tree?: string };

/** A precondition of {@linkcode Store.commit}: `value: null` = must be absent. */
export interface CommitCheck {
  /** The key to check. */
  key: StoreKey;
  /** The exact current value required, or `null` for "absent". */
  value: StoreBytes | null;
  /** Tree of the key (default: the store's tree). */
  tree?: string;
}

/** Options of {@linkcode Store.commit}. */
export interface CommitOptions {
  /** The request context recorded in the journal. */
  ctx?: Context;
  /** Preconditions; any failing one rejects the whole batch with `ConflictError`. */
  checks?: CommitCheck[];
}

/**
 * What the local replica of a cluster store reflects, from
 * {@linkcode Store.replica}. A read made right after this call reflects at
 * least `revision` (exactly it when a second call reports the same revision).
 */
export interface ReplicaState {
  /** The cluster revision the replica has applied (tx ids are revisions). */
  readonly revision: number;
  /** The replica is not following the cluster (disconnected or resyncing): reads may be old. */
  readonly stale: boolean;
  /** Since when it is stale, or `null`. */
  readonly staleSince: Date | null;
  /** Why it is stale (`""` when not). */
  readonly reason: string;
  /** Full resyncs since open (after a compaction outran the watch). */
  readonly resyncs: number;
}

/** Options of {@linkcode Store.sync} and {@linkcode Store.getLinearizable}. */
export interface SyncOptions {
  /** Its deadline bounds the wait (default: the cluster's `timeoutMs`). */
  ctx?: Context;
}

/** Options of {@linkcode Store.scan}. */
export interface ScanOptions {
  /** Only keys starting with this. */
  prefix?: StoreKey;
  /** First key (inclusive). */
  start?: StoreKey;
  /** Last key (exclusive). */
  end?: StoreKey;
  /** At most this many entries. */
  limit?: number;
  /** Descending key order. */
  reverse?: boolean;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** Values up to `LARGE_VALUE_BYTES` are copied into a shared slab; larger ones into a buffer of their own. */
const SLAB_BYTES = 256 * 1024;
const LARGE_VALUE_BYTES = 16 * 1024;

function toBytes(field: string, value: unknown): Uint8Array<ArrayBuffer> {
  if (typeof value === "string") return encoder.encode(value);
  if (value instanceof Uint8Array) return value as Uint8Array<ArrayBuffer>;
  invalidArgument(
    field,
    `must be a Uint8Array or a string, got ${value === null ? "null" : typeof value}`,
  );
}

const EMPTY = new Uint8Array(0);

function treeBytes(field: string, tree: unknown): Uint8Array | null {
  if (tree === undefined) return null;
  if (typeof tree !== "string") invalidArgument(field, "must be a string");
  return encoder.encode(tree);
}

/** Bump allocator of shared slabs that small values are copied into. */
class Slab {
  readonly buffer: SharedBuffer;
  readonly bytes: Uint8Array<ArrayBuffer>;
  offset = 0;
  live = 0;
  retired = false;

  constructor(buffers: Buffers) {
    this.buffer = buffers.alloc(SLAB_BYTES);
    this.bytes = this.buffer.bytes;
  }

  /** One value less; a retired slab is freed with its last value. */
  unref(): void {
    this.live--;
    if (this.retired && this.live === 0) this.buffer.release();
  }

  retire(): void {
    this.retired = true;
    if (this.live === 0) this.buffer.release();
  }
}

/**
 * A value read from the store, zero-copy: a read-only view valid until
 * `release()` (use `using`). Small values sit in kernel memory shared with
 * JS (the kernel copied them once from its cache); values over 16 KiB get a
 * kernel buffer of their own. Either way the memory is the kernel's, never
 * the store's cache, so even a write through a cast cannot alter the store.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: "./data" });
 * kernel.store.put("greeting", "hello");
 * using value = kernel.store.get("greeting");
 * console.log(value?.text()); // "hello"
 * ```
 */
export class StoreValue implements Disposable {
  /** Length in bytes. */
  readonly length: number;
  readonly #slab: Slab | null;
  readonly #buffer: SharedBuffer | null;
  readonly #offset: number;
  #released = false;

  /** @internal */
  constructor(slab: Slab | null, buffer: SharedBuffer | null, offset: number, length: number) {
    this.#slab = slab;
    this.#buffer = buffer;
    this.#offset = offset;
    this.length = length;
  }

  /** The bytes (no copy). @throws {ClosedError} after `release()`. */
  get bytes(): ReadonlyBytes {
    if (this.#released) throw new ClosedError("StoreValue.bytes: the value was released");
    if (this.#buffer !== null) return this.#buffer.bytes as ReadonlyBytes;
    return this.#slab!.bytes.subarray(this.#offset, this.#offset + this.length) as ReadonlyBytes;
  }

  /** The value decoded as UTF-8. */
  text(): string {
    return decoder.decode(this.bytes as Uint8Array);
  }

  /** The value parsed as JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.text()) as T;
  }

  /** A copy the application owns. */
  copy(): Uint8Array<ArrayBuffer> {
    return (this.bytes as Uint8Array<ArrayBuffer>).slice();
  }

  /** Gives the memory back. Idempotent. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    if (this.#buffer !== null) this.#buffer.release();
    else this.#slab!.unref();
  }

  /** Releases the value (for `using`). */
  [Symbol.dispose](): void {
    this.release();
  }
}

/** Per-kernel state shared by every tree. */
interface StoreShared {
  owner: KernelOwner;
  buffers: Buffers;
  kernel: object;
  slab: Slab | null;
  keyScratch: Uint8Array<ArrayBuffer>;
  bufferOut: BigUint64Array<ArrayBuffer>;
  commits: CommitPump;
  /** The store is a replica of an etcd prefix. */
  cluster: boolean;
  replicaOut: Uint8Array<ArrayBuffer>;
}

/**
 * One tree of the kernel's store (`kernel.store` is the default tree).
 *
 * @example
 * ```ts
 * import { createContext, Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: "./data" });
 * const users = kernel.store.tree("users");
 * users.put("alice", JSON.stringify({ plan: "pro" }));
 * const { txId } = await users.commit(
 *   [{ type: "put", key: "bob", value: "{}" }],
 *   { ctx: createContext({ tenantId: "acme" }), checks: [{ key: "bob", value: null }] },
 * );
 * for (const { key } of users.scan({ prefix: "a" })) console.log(new TextDecoder().decode(key));
 * ```
 */
export class Store {
  /** The tree's name ("" for the default tree). */
  readonly name: string;
  readonly #shared: StoreShared;
  readonly #handle: number;
  readonly #trees: Map<string, Store>;

  /** @internal Use `kernel.store`. */
  constructor(shared: StoreShared, name: string, trees: Map<string, Store>) {
    if (typeof name !== "string") {
      throw new InvalidArgumentError("tree name must be a string", { details: { field: "tree" } });
    }
    const { native } = shared.owner;
    shared.owner.assertOpen("store.tree");
    const nameBytes = encoder.encode(name);
    const out = new Uint32Array(1);
    native.check(
      native.symbols.krepis_store_tree(shared.owner.handle, nameBytes, nameBytes.length, out),
    );
    this.name = name;
    this.#shared = shared;
    this.#handle = out[0];
    this.#trees = trees;
    trees.set(name, this);
  }

  /** @internal Creates the default tree of a kernel; `commits` collects job results. */
  static open(
    owner: KernelOwner,
    buffers: Buffers,
    kernel: object,
    commits: CommitPump,
    cluster: boolean,
  ): Store {
    const shared: StoreShared = {
      owner,
      buffers,
      kernel,
      slab: null,
      keyScratch: new Uint8Array(4096),
      bufferOut: new BigUint64Array(3),
      commits,
      cluster,
      replicaOut: new Uint8Array(1024),
    };
    return new Store(shared, "", new Map());
  }

  /**
   * A named tree of the same store (keys are separate per tree).
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: "./data" });
   * kernel.store.tree("sessions").put("s1", "…");
   * ```
   */
  tree(name: string): Store {
    return this.#trees.get(name) ?? new Store(this.#shared, name, this.#trees);
  }

  /** Key bytes and length, encoding strings into a reused scratch buffer. */
  #key(key: StoreKey, field = "key"): [Uint8Array<ArrayBuffer>, number] {
    this.#shared.owner.assertOpen("store");
    const scratch = this.#shared.keyScratch;
    if (typeof key === "string" && key.length * 3 <= scratch.length) {
      const { written } = encoder.encodeInto(key, scratch);
      return [scratch, written];
    }
    const bytes = toBytes(field, key);
    return [bytes, bytes.length];
  }

  /**
   * The value of `key` as a zero-copy read-only view, or `null`. Release it
   * (`using`) when done; {@linkcode getCopy} returns a copy instead.
   */
  get(key: StoreKey): StoreValue | null {
    const [bytes, length] = this.#key(key);
    const shared = this.#shared;
    const { native } = shared.owner;
    for (;;) {
      const slab = shared.slab ??= new Slab(shared.buffers);
      const offset = slab.offset;
      const status = native.check(
        native.symbols.krepis_store_get(
          this.#handle,
          bytes,
          length,
          slab.bytes,
          offset,
          // Large values go to a buffer of their own: do not copy them here.
          Math.min(SLAB_BYTES, offset + LARGE_VALUE_BYTES),
        ),
      );
      if (status === 0) return null;
      const size = status - 1;
      if (size > LARGE_VALUE_BYTES) return this.#getAsBuffer(bytes, length);
      if (size > SLAB_BYTES - offset) {
        // The slab is full: retire it (freed with its last value) and retry.
        slab.retire();
        shared.slab = null;
        continue;
      }
      slab.offset = offset + ((size + 7) & ~7);
      slab.live++;
      return new StoreValue(slab, null, offset, size);
    }
  }

  #getAsBuffer(bytes: Uint8Array<ArrayBuffer>, length: number): StoreValue | null {
    const shared = this.#shared;
    const { native } = shared.owner;
    const found = native.check(
      native.symbols.krepis_store_get_buffer(this.#handle, bytes, length, shared.bufferOut),
    );
    if (found === 0) return null;
    const buffer = adoptKernelBuffer(shared.owner, shared.kernel, {
      handle: Number(shared.bufferOut[0]),
      address: shared.bufferOut[1],
      byteLength: Number(shared.bufferOut[2]),
    });
    return new StoreValue(null, buffer, 0, buffer.byteLength);
  }

  /** A copy of the value of `key`, or `null`. */
  getCopy(key: StoreKey): Uint8Array<ArrayBuffer> | null {
    const value = this.get(key);
    if (value === null) return null;
    try {
      return value.copy();
    } finally {
      value.release();
    }
  }

  /**
   * What the local replica reflects on a cluster store (its revision, and
   * whether it is stale because the cluster is out of reach); `null` on a
   * local store, whose reads are always current.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({
   *   dataDir: null,
   *   store: { cluster: { endpoints: ["127.0.0.1:2379"], prefix: "/app/" } },
   * });
   * const state = kernel.store.replica();
   * if (state?.stale) console.warn(`reads are from revision ${state.revision}: ${state.reason}`);
   * ```
   */
  replica(): ReplicaState | null {
    const shared = this.#shared;
    shared.owner.assertOpen("store.replica");
    if (!shared.cluster) return null;
    const { native, handle } = shared.owner;
    const length = native.check(
      native.symbols.krepis_store_replica(handle, shared.replicaOut, shared.replicaOut.length),
    );
    if (length > shared.replicaOut.length) {
      shared.replicaOut = new Uint8Array(length);
      return this.replica();
    }
    const state = ReplicaStateMessage.decode(shared.replicaOut.subarray(0, length));
    const since = Number(state.staleSinceUnixMs);
    return {
      revision: Number(state.revision),
      stale: state.stale,
      staleSince: state.stale ? new Date(since) : null,
      reason: state.reason,
      resyncs: Number(state.resyncs),
    };
  }

  /**
   * Waits until this kernel's replica reflects every commit made on the
   * cluster before the call (one linearizable etcd read, then the replica
   * catching up); reads made after it resolves are linearizable. Resolves
   * with the replica's revision. On a local store it resolves at once with
   * `revision: 0` (local reads are always current).
   *
   * @throws {ConnectionError} the cluster did not answer within the deadline.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({
   *   dataDir: null,
   *   store: { cluster: { endpoints: ["127.0.0.1:2379"], prefix: "/app/" } },
   * });
   * await kernel.store.sync();
   * console.log(kernel.store.get("config")?.text()); // as of now, cluster-wide
   * ```
   */
  async sync(options: SyncOptions = {}): Promise<{ revision: number }> {
    const shared = this.#shared;
    shared.owner.assertOpen("store.sync");
    checkOptions("sync", options);
    const message = contextMessage(options.ctx);
    if (!shared.cluster) return { revision: 0 };
    const ctx = message === undefined
      ? new Uint8Array(0)
      : ContextMessage.encode(message).finish() as Uint8Array<ArrayBuffer>;
    const { native, handle } = shared.owner;
    const { txId } = await shared.commits.run((ticket) =>
      native.symbols.krepis_store_sync(handle, ctx, ctx.length, ticket)
    );
    return { revision: txId };
  }

  /**
   * A linearizable read of `key`: {@linkcode sync}, then {@linkcode get}
   * (the value as of a moment between the call and its result, cluster-wide).
   * On a local store it is `get`.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({
   *   dataDir: null,
   *   store: { cluster: { endpoints: ["127.0.0.1:2379"], prefix: "/app/" } },
   * });
   * using stock = await kernel.store.getLinearizable("sku-1");
   * ```
   */
  async getLinearizable(key: StoreKey, options: SyncOptions = {}): Promise<StoreValue | null> {
    await this.sync(options);
    return this.get(key);
  }

  /** True when `key` exists. */
  has(key: StoreKey): boolean {
    const [bytes, length] = this.#key(key);
    const { native } = this.#shared.owner;
    return native.check(native.symbols.krepis_store_has(this.#handle, bytes, length)) === 1;
  }

  /**
   * Sets `key` to `value` (synchronous, not journaled). Use
   * {@linkcode commit} for atomic, journaled, durable writes.
   *
   * When `put` returns, the value is in the store's memory and every reader
   * sees it; it is durable once a flush covers it (the background flush,
   * within ~0.5 s, or {@linkcode flush}). Until then a crash loses it. If a
   * flush fails (disk full, I/O error), the writes it covered are not
   * durable: `flush()` rejects with `IoError` saying how many puts/deletes
   * (at most) are affected (`details.lostWrites`), every later write is
   * refused with `IoError` until the kernel is reopened, and those writes are
   * lost when it closes (`kernel.close()` rejects with the same report when
   * no `flush()` reported them). Commits that resolved are never affected.
   *
   * @throws {IoError} the store failed an earlier write (reopen the kernel).
   * @throws {UnsupportedError} on a cluster store: a cluster write is neither
   * synchronous nor unjournaled; use `commit([{ type: "put", key, value }])`.
   */
  put(key: StoreKey, value: StoreBytes): void {
    const valueBytes = toBytes("value", value);
    const [bytes, length] = this.#key(key);
    const { native } = this.#shared.owner;
    native.check(
      native.symbols.krepis_store_put(this.#handle, bytes, length, valueBytes, valueBytes.length),
    );
  }

  /**
   * Deletes `key`; true when it existed (not journaled; durable like {@linkcode put}).
   *
   * @throws {UnsupportedError} on a cluster store; use `commit([{ type: "delete", key }])`.
   */
  delete(key: StoreKey): boolean {
    const [bytes, length] = this.#key(key);
    const { native } = this.#shared.owner;
    return native.check(native.symbols.krepis_store_delete(this.#handle, bytes, length)) === 1;
  }

  /** Streams entries in key order (see {@linkcode ScanOptions}). */
  scan(options: ScanOptions = {}): StoreScan {
    this.#shared.owner.assertOpen("store.scan");
    checkOptions("scan", options);
    const limit = options.limit ?? 0;
    if (!Number.isInteger(limit) || limit < 0 || limit > 0xffffffff) {
      throw new InvalidArgumentError(`scan limit must be a non-negative integer, got ${limit}`, {
        details: { field: "limit" },
      });
    }
    const message = ScanOptionsMessage.encode({
      prefix: options.prefix === undefined ? new Uint8Array() : toBytes("prefix", options.prefix),
      start: options.start === undefined ? undefined : toBytes("start", options.start),
      end: options.end === undefined ? undefined : toBytes("end", options.end),
      limit,
      reverse: options.reverse === true,
    }).finish();
    const { native } = this.#shared.owner;
    const out = new Uint32Array(1);
    native.check(native.symbols.krepis_store_scan(this.#handle, message, message.length, out));
    return new StoreScan(this.#shared.owner, out[0]);
  }

  /**
   * Changes under `prefix` from now on, as an async iterator (the changes of
   * one commit arrive together, in no particular order). The feed holds
   * up to `capacity` bytes of unread changes; a full feed slows the writers'
   * notifications, never drops them.
   */
  watch(prefix: StoreKey = "", options: { capacity?: number } = {}): StoreWatch {
    const [bytes, length] = this.#key(prefix, "prefix");
    const copy = bytes.slice(0, length);
    const ring = openRing(this.#shared.owner, {
      capacity: options.capacity ?? 1 << 20,
      direction: "toJs",
    });
    const { native } = this.#shared.owner;
    try {
      native.check(
        native.symbols.krepis_store_watch(
          this.#handle,
          copy,
          copy.length,
          ring.nativeHandle,
        ),
      );
    } catch (error) {
      ring.close();
      throw error;
    }
    return new StoreWatch(ring);
  }

  /**
   * Applies `ops` atomically if every check holds, with a journal record in
   * the same atomic step; resolves once durable. A failed check rejects the
   * whole batch with `ConflictError` naming the key.
   *
   * Concurrent commits are group-committed: a few share one fsync. A commit
   * becomes visible to readers (and watchers) when it is applied, a moment
   * before its promise resolves; if the machine loses power in that moment,
   * a commit whose promise never resolved may be gone. A commit that rejects
   * with `IoError` and `details.outcome === "unknown"` (the disk failed or did
   * not answer within `store.ioTimeoutMs`) may or may not be in the store
   * once it is reopened; a resolved commit always is.
   *
   * On a cluster store a commit is one etcd transaction (checks are
   * compares, the journal record is written in it); it resolves once etcd
   * committed it and this kernel's replica applied it, and its `txId` is the
   * cluster revision it committed at. etcd's limits are checked first
   * (`InvalidArgumentError` with `details.reason` `"too_many_ops"` or
   * `"request_too_large"`); a cluster out of reach rejects it with
   * `ConnectionError` within the context's deadline.
   */
  async commit(ops: CommitOp[], options: CommitOptions = {}): Promise<CommitResult> {
    this.#shared.owner.assertOpen("store.commit");
    if (!Array.isArray(ops) || ops.length === 0) {
      throw new InvalidArgumentError("commit needs a non-empty array of ops", {
        details: { field: "ops" },
      });
    }
    const request = encodeCommitRequest(
      ops.map((op, index) => {
        if (typeof op !== "object" || op === null || (op.type !== "put" && op.type !== "delete")) {
          throw new InvalidArgumentError(`ops[${index}].type must be "put" or "delete"`, {
            details: { field: `ops[${index}].type` },
          });
        }
        return {
          put: op.type === "put",
          key: toBytes(`ops[${index}].key`, op.key),
          value: op.type === "put" ? toBytes(`ops[${index}].value`, op.value) : EMPTY,
          tree: treeBytes(`ops[${index}].tree`, op.tree),
        };
      }),
      (options.checks ?? []).map((check, index) => ({
        key: toBytes(`checks[${index}].key`, check?.key),
        value: check.value === null ? null : toBytes(`checks[${index}].value`, check.value),
        tree: treeBytes(`checks[${index}].tree`, check.tree),
      })),
      encodedContext(options.ctx),
    );
    const handle = this.#handle;
    const { native } = this.#shared.owner;
    return await this.#shared.commits.run((ticket) =>
      native.symbols.krepis_store_commit_submit(handle, request, request.length, ticket)
    );
  }

  /**
   * Makes every write so far durable (puts and deletes included).
   *
   * @throws {IoError} the disk failed (e.g. it is full): `details.lostWrites`
   * is how many puts/deletes made since the last successful flush (at most)
   * are not durable; free space, then close the kernel and open it again. A
   * disk that does not answer within `store.ioTimeoutMs` also rejects
   * (`details.reason` `"timeout"`), never hangs.
   */
  async flush(): Promise<void> {
    this.#shared.owner.assertOpen("store.flush");
    const { native, handle } = this.#shared.owner;
    await this.#shared.commits.run((ticket) => native.symbols.krepis_store_flush(handle, ticket));
  }

  /**
   * A view of this tree whose values are JSON.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: "./data" });
   * const users = kernel.store.tree("users").json<{ plan: string }>();
   * users.put("alice", { plan: "pro" });
   * users.get("alice")?.plan; // "pro"
   * ```
   */
  json<T>(): JsonStore<T> {
    return new JsonStore<T>(this);
  }
}

/** A {@linkcode Store} tree whose values are JSON-encoded `T`. */
export class JsonStore<T> {
  readonly #store: Store;

  /** @internal Use `store.json<T>()`. */
  constructor(store: Store) {
    this.#store = store;
  }

  /** The decoded value of `key`, or `null`. */
  get(key: StoreKey): T | null {
    using value = this.#store.get(key);
    return value === null ? null : value.json<T>();
  }

  /** Stores `value` as JSON (not journaled; see `Store.put`). */
  put(key: StoreKey, value: T): void {
    this.#store.put(key, JSON.stringify(value));
  }

  /** Deletes `key`. */
  delete(key: StoreKey): boolean {
    return this.#store.delete(key);
  }

  /** Atomic, journaled, durable JSON writes. */
  commit(
    ops: ({ type: "put"; key: StoreKey; value: T } | { type: "delete"; key: StoreKey })[],
    options?: CommitOptions,
  ): Promise<CommitResult> {
    return this.#store.commit(
      ops.map((op) => op.type === "put" ? { ...op, value: JSON.stringify(op.value) } : op),
      options,
    );
  }
}
