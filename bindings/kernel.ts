/**
 * The kernel: the native runtime behind every other API of the SDK.
 *
 * @module
 */

import { KernelConfig, Stats } from "./_gen/proto/krepis/v1/kernel.ts";
import type { StoreRecovery as StoreRecoveryMessage } from "./_gen/proto/krepis/v1/store.ts";
import { type LibraryOptions, loadLibrary } from "./_loader.ts";
import type { NativeLibrary } from "./_native.ts";
import { KernelOwner, registerOwner, warnEscaped } from "./_owner.ts";
import { KernelEvents } from "./_events.ts";
import { KREPIS_BUFFER_ABANDONED } from "./_gen/symbols.ts";
import { Buffers, type BufferStats } from "./buffers.ts";
import { Store } from "./store/store.ts";
import { Journal } from "./store/journal.ts";
import { CommitPump } from "./store/_commit.ts";
import { Guard } from "./guard.ts";
import { encodeTransportOptions, Transport, type TransportOptions } from "./transport/transport.ts";
import { Http } from "./http/http.ts";
import { Runtimes } from "./runtimes/runtimes.ts";
import { requirePermission } from "./_permissions.ts";
import { ClosedError, InvalidArgumentError, PermissionError } from "./errors.ts";
import {
  checkInteger,
  checkObject,
  checkOptions,
  checkString,
  checkStringList,
  invalidArgument,
} from "./_check.ts";
import { requireNetPermission } from "./_net.ts";
import type { ClusterConfig } from "./_gen/proto/krepis/v1/store.ts";

/** Most worker threads a kernel accepts. */
export const MAX_WORKER_THREADS = 256;

/** Options of {@linkcode Kernel.open}. */
export interface KernelOptions extends LibraryOptions {
  /** Tokio worker threads; default one per CPU core. 1–256. */
  workerThreads?: number;
  /**
   * The kernel's data directory (store, journal), created if missing.
   * Relative paths resolve against the current directory. `null` = the kernel
   * touches no files. Default: `.krepis`. Needs read and write permission.
   */
  dataDir?: string | URL | null;
  /** How long `close()` waits for running kernel tasks, in ms. Default 5000. */
  shutdownGraceMs?: number;
  /** The store in `<dataDir>/store`. */
  store?: StoreOptions;
  /** The transport's budget: links and the memory their windows may hold. */
  transport?: TransportOptions;
}

/** Options of the kernel's store. */
export interface StoreOptions {
  /** Journal retention: keep at most this many records (default: unlimited). */
  journalMaxRecords?: number;
  /** Journal retention: drop records older than this many ms (default: never). */
  journalMaxAgeMs?: number;
  /** Page cache size in bytes (default 256 MiB). */
  cacheBytes?: number;
  /** Largest value accepted, in bytes (default 256 MiB). */
  maxValueBytes?: number;
  /**
   * What opening does when the commit log cannot be replayed completely
   * (damaged, missing or emptied, so acknowledged commits may be gone):
   * `"refuse"` (default) fails with `CorruptError` naming the file, the
   * offset and the transaction ids at risk, and changes nothing; `"truncate"`
   * opens anyway, replays what it can, drops the rest and reports exactly what
   * in `kernel.stats().store.recovery`. Transaction ids of dropped commits are
   * never handed out again. A cluster store has no commit log: it checks the
   * value and ignores it.
   */
  recover?: "refuse" | "truncate";
  /**
   * How long a commit, flush or undo may wait for the disk before it is
   * rejected with `IoError` (its outcome then unknown), in ms. Default 30000.
   * A cluster store bounds its commits with {@linkcode ClusterOptions.timeoutMs}
   * instead (the ioTimeoutMs still bounds closing it).
   */
  ioTimeoutMs?: number;
  /**
   * Keep the store on an etcd v3 cluster instead of `<dataDir>/store`: the
   * same API, with reads served by a local replica of `prefix` (see
   * {@linkcode ClusterOptions}). Needs net permission for each endpoint.
   */
  cluster?: ClusterOptions;
}

/**
 * The store on a prefix of an etcd v3 cluster: several kernels (processes,
 * machines) opened with the same endpoints and prefix share one store,
 * journal and watches.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({
 *   dataDir: null,
 *   store: { cluster: { endpoints: ["127.0.0.1:2379"], prefix: "/shop/" } },
 * });
 * await kernel.store.commit([{ type: "put", key: "sku-1", value: "3" }]);
 * ```
 */
export interface ClusterOptions {
  /** etcd members, `"host:port"` or `"http://host:port"` (at least one). */
  endpoints: string[];
  /** Every key of the store lives under this etcd key prefix (non-empty). */
  prefix: string;
  /**
   * Deadline of a commit, undo or linearizable read without a context
   * deadline, and of opening, in ms (default 5000).
   */
  timeoutMs?: number;
  /** The cluster's `--max-txn-ops` (default 128, etcd's default). */
  maxTxnOps?: number;
  /** The cluster's `--max-request-bytes` (default 1572864, etcd's default). */
  maxRequestBytes?: number;
}

/** What recovering the commit log did when the store opened. */
export interface StoreRecovery {
  /** The `store.recover` mode it ran with. */
  readonly mode: "refuse" | "truncate";
  /** Acknowledged commits re-applied from the commit log. */
  readonly replayed: number;
  /**
   * A last record cut short by a crash: never acknowledged, dropped.
   * `null` when there was none.
   */
  readonly torn: { readonly offset: number; readonly txId: number } | null;
  /**
   * Commits dropped by `recover: "truncate"` (acknowledged ones may be
   * among them): where the damage starts in `commit.log` (0 when the log was
   * missing), the transaction ids that may be gone, and why. `null` when
   * nothing was dropped.
   */
  readonly dropped: {
    readonly offset: number;
    readonly firstTxId: number;
    readonly lastTxId: number;
    readonly reason: string;
  } | null;
  /** Damaged records skipped because the store had them already. */
  readonly skipped: readonly string[];
}

/** Counters of the store, in {@linkcode KernelStats.store}. */
export interface StoreStats {
  /** The id the next transaction will get. */
  readonly nextTxId: number;
  /** Records in the journal. */
  readonly journalRecords: number;
  /** Transactions committed since the kernel opened. */
  readonly commits: number;
  /** Group flushes since the kernel opened (commits ÷ flushes = group size). */
  readonly flushes: number;
  /** Size of the store on disk, in bytes. */
  readonly sizeOnDiskBytes: number;
  /** What recovering the commit log did when the store opened. */
  readonly recovery: StoreRecovery;
}

/** A snapshot of a kernel's counters, from {@linkcode Kernel.stats}. */
export interface KernelStats {
  /** Process-unique id of this kernel. */
  readonly kernelId: number;
  /** Version of the native library. */
  readonly version: string;
  /** Worker threads of the kernel's runtime. */
  readonly workerThreads: number;
  /** Tasks alive on the kernel's runtime. */
  readonly aliveTasks: number;
  /** Milliseconds since the kernel was opened. */
  readonly uptimeMs: number;
  /** Kernels open in this process. */
  readonly openKernels: number;
  /** Absolute data directory, or `null`. */
  readonly dataDir: string | null;
  /** Shared buffers and rings. */
  readonly buffers: BufferStats;
  /** The store, or `null` without a data dir. */
  readonly store: StoreStats | null;
  /** KNUL links and listeners. */
  readonly transport: TransportStats;
}

/** Counters of the transport, in {@linkcode KernelStats.transport}. */
export interface TransportStats {
  /** Links not yet freed (`link.close()` frees one; so does its GC safety net). */
  readonly links: number;
  /** Listeners not yet closed. */
  readonly listeners: number;
  /** Window bytes links hold now (given back when a link is freed). */
  readonly windowBytes: number;
  /** The kernel's budget for them ({@linkcode TransportOptions.maxWindowBytes}); 0 before the transport is used. */
  readonly maxWindowBytes: number;
  /** The kernel's link budget ({@linkcode TransportOptions.maxLinks}); 0 before the transport is used. */
  readonly maxLinks: number;
  /** Links refused because the kernel's budget was spent. */
  readonly linksRefused: number;
}

/** The cluster options as the kernel takes them, checked; net permission for every member. */
function clusterConfig(cluster: unknown): ClusterConfig | undefined {
  if (cluster === undefined) return undefined;
  const options = checkObject("store.cluster", cluster);
  const endpoints = checkStringList("store.cluster.endpoints", options.endpoints);
  if (endpoints.length === 0) {
    invalidArgument("store.cluster.endpoints", 'needs at least one etcd member ("host:port")');
  }
  for (const endpoint of endpoints) {
    const host = endpoint.replace(/^http:\/\//, "");
    if (host === "" || host.includes("/")) {
      invalidArgument("store.cluster.endpoints", `${JSON.stringify(endpoint)} is not "host:port"`);
    }
    requireNetPermission(host, `connecting to the etcd member ${host}`);
  }
  const limit = (field: "timeoutMs" | "maxTxnOps" | "maxRequestBytes", max: number): number =>
    options[field] === undefined
      ? 0
      : checkInteger(`store.cluster.${field}`, options[field], 1, max);
  return {
    endpoints,
    prefix: new TextEncoder().encode(checkString("store.cluster.prefix", options.prefix)),
    timeoutMs: limit("timeoutMs", 3_600_000),
    maxTxnOps: limit("maxTxnOps", 1_000_000),
    maxRequestBytes: limit("maxRequestBytes", 0x7fffffff),
  };
}

function resolveDataDir(dataDir: string | URL | null | undefined): string {
  if (dataDir === null) return "";
  const given = dataDir ?? ".krepis";
  let path: string;
  if (given instanceof URL) {
    if (given.protocol !== "file:") {
      throw new InvalidArgumentError(`dataDir must be a file: URL, got ${given.protocol}`, {
        details: { field: "dataDir" },
      });
    }
    path = decodeURIComponent(given.pathname).replace(/^\/([A-Za-z]:)/, "$1");
  } else if (typeof given === "string" && given.length > 0) {
    path = given;
  } else {
    throw new InvalidArgumentError("dataDir must be a non-empty string, a file: URL or null", {
      details: { field: "dataDir" },
    });
  }
  // POSIX: "/…"; Windows: "C:\…" or "\\server\share" (a bare "\…" is not absolute).
  const absolute = Deno.build.os === "windows"
    ? /^([A-Za-z]:[\\/]|\\\\)/.test(path)
    : path.startsWith("/");
  if (!absolute) {
    let cwd: string;
    try {
      cwd = Deno.cwd();
    } catch (cause) {
      throw new PermissionError(
        `resolving the relative dataDir "${path}" needs the current directory (--allow-read); ` +
          "or pass an absolute dataDir",
        { cause, details: { permission: "read" } },
      );
    }
    path = `${cwd.replace(/[\\/]+$/, "")}/${path}`;
  }
  requirePermission({ name: "read", path }, `opening the data dir ${path}`, `--allow-read`);
  requirePermission({ name: "write", path }, `opening the data dir ${path}`, `--allow-write`);
  return path;
}

function recoveryOf(recovery: StoreRecoveryMessage | undefined): StoreRecovery {
  return {
    mode: recovery?.mode === "truncate" ? "truncate" : "refuse",
    replayed: Number(recovery?.replayed ?? 0),
    torn: recovery === undefined || recovery.tornTxId === 0n
      ? null
      : { offset: Number(recovery.tornOffset), txId: Number(recovery.tornTxId) },
    dropped: recovery?.dropped === true
      ? {
        offset: Number(recovery.droppedOffset),
        firstTxId: Number(recovery.droppedFirstTxId),
        lastTxId: Number(recovery.droppedLastTxId),
        reason: recovery.droppedReason,
      }
      : null,
    skipped: Object.freeze([...(recovery?.skipped ?? [])]),
  };
}

const leaks = new FinalizationRegistry<KernelOwner>((owner) => {
  // Safety net for a kernel that was never closed and is unreachable: detach
  // every view of its memory that is still around, then stop it.
  void shutDown(owner).catch(() => {});
});

/**
 * Detaches every mapping, abandons memory JS lost track of, closes the kernel
 * (once no kernel thread can still be calling JS's wake callback), then frees
 * that callback. Returns the close call's status.
 */
async function shutDown(owner: KernelOwner): Promise<number> {
  await owner.events.quiesceForClose();
  for (const handle of owner.closeAll()) {
    warnEscaped("kernel memory");
    owner.native.symbols.krepis_buffer_release(handle, KREPIS_BUFFER_ABANDONED);
  }
  try {
    return owner.native.symbols.krepis_kernel_close(owner.handle);
  } finally {
    owner.events.close();
  }
}

/**
 * A running kernel. Open one per application (or per isolated component) and
 * close it when done; `await using` does that for you.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 *
 * await using kernel = await Kernel.open({ workerThreads: 2, dataDir: null });
 * console.log(kernel.version, kernel.stats().workerThreads); // "0.1.0" 2
 * ```
 */
export class Kernel implements AsyncDisposable {
  /** Version of the native library (equal to the package version). */
  readonly version: string;
  /** ABI hash of the native library (equal to the bindings'). */
  readonly abiHash: string;
  /** Zero-copy shared memory between JS and the kernel. */
  readonly buffers: Buffers;
  #store: Store | undefined;
  #guard: Guard | undefined;
  #transport: Transport | undefined;
  #http: Http | undefined;
  #runtimes: Runtimes | undefined;
  #journal: Journal | undefined;
  /** Collects the results of the store's commits, flushes and undos. */
  readonly #commits: CommitPump;
  readonly #native: NativeLibrary;
  readonly #handle: number;
  readonly #owner: KernelOwner;
  readonly #dataDir: string | null;
  /** The store is on an etcd cluster (it needs no data dir). */
  readonly #cluster: boolean;
  readonly #transportOptions: Uint8Array;
  #closing: Promise<void> | undefined;

  private constructor(
    native: NativeLibrary,
    handle: number,
    events: KernelEvents,
    dataDir: string | null,
    cluster: boolean,
    transportOptions: Uint8Array,
  ) {
    this.#dataDir = dataDir;
    this.#cluster = cluster;
    this.#transportOptions = transportOptions;
    this.#native = native;
    this.#handle = handle;
    this.#owner = new KernelOwner(native, handle, events);
    this.#commits = new CommitPump(this.#owner);
    this.version = native.version;
    this.abiHash = native.abiHash;
    this.buffers = new Buffers(this.#owner, this);
    registerOwner(this, this.#owner);
    leaks.register(this, this.#owner, this);
  }

  /**
   * Loads the native library (once per process), checks permissions and opens
   * a kernel.
   *
   * Needs `--allow-ffi`, and read/write permission for `dataDir` unless it is
   * `null`. Without a local library (`libraryPath` / `KREPIS_LIBRARY_PATH`) it
   * downloads the verified release artifact, which needs `--allow-net`.
   *
   * @throws {InvalidArgumentError} an option has the wrong type or range.
   * @throws {PermissionError} a Deno permission is missing.
   * @throws {LoadError} the library cannot be found or opened.
   * @throws {IntegrityError} a downloaded library fails its checksum.
   * @throws {AbiMismatchError} the library is another version or ABI.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * const kernel = await Kernel.open({ dataDir: "./.krepis" });
   * await kernel.close();
   * ```
   */
  static async open(options: KernelOptions = {}): Promise<Kernel> {
    checkOptions("Kernel.open", options);
    const workerThreads = options.workerThreads === undefined
      ? 0
      : checkInteger("workerThreads", options.workerThreads, 1, MAX_WORKER_THREADS);
    const shutdownGraceMs = options.shutdownGraceMs === undefined
      ? 0
      : checkInteger("shutdownGraceMs", options.shutdownGraceMs, 1, 3_600_000);
    const transportOptions = encodeTransportOptions(options.transport);
    const native = await loadLibrary(options);
    const dataDir = resolveDataDir(options.dataDir);
    const store = options.store ?? {};
    if (typeof store !== "object" || store === null) {
      throw new InvalidArgumentError("store options must be an object", {
        details: { field: "store" },
      });
    }
    const storeNumber = (
      field: Exclude<keyof StoreOptions, "recover" | "cluster">,
      max = Number.MAX_SAFE_INTEGER,
    ) =>
      BigInt(
        store[field] === undefined ? 0 : checkInteger(`store.${field}`, store[field], 1, max),
      );
    const cluster = clusterConfig(store.cluster);
    if (store.recover !== undefined && store.recover !== "refuse" && store.recover !== "truncate") {
      throw new InvalidArgumentError(
        `store.recover must be "refuse" or "truncate", got ${JSON.stringify(store.recover)}`,
        { details: { field: "store.recover" } },
      );
    }
    const config = KernelConfig.encode({
      workerThreads,
      dataDir,
      shutdownGraceMs,
      threadName: "",
      store: {
        journalMaxRecords: storeNumber("journalMaxRecords"),
        journalMaxAgeMs: storeNumber("journalMaxAgeMs"),
        cacheCapacityBytes: storeNumber("cacheBytes"),
        maxValueBytes: storeNumber("maxValueBytes"),
        recover: store.recover ?? "",
        ioTimeoutMs: storeNumber("ioTimeoutMs", 3_600_000),
        cluster,
      },
    }).finish();
    const out = new Uint32Array(1);
    const events = new KernelEvents(native);
    try {
      native.check(native.symbols.krepis_kernel_open(config, config.length, events.pointer, out));
    } catch (error) {
      events.close();
      throw error;
    }
    events.attach(out[0]);
    return new Kernel(
      native,
      out[0],
      events,
      dataDir === "" ? null : dataDir,
      cluster !== undefined,
      transportOptions,
    );
  }

  /**
   * The kernel's store (its default tree; `store.tree(name)` for others).
   *
   * @throws {InvalidArgumentError} when the kernel was opened with `dataDir: null`.
   * @throws {ClosedError} after `close()`.
   */
  get store(): Store {
    this.#assertOpen("Kernel.store");
    if (this.#dataDir === null && !this.#cluster) {
      throw new InvalidArgumentError(
        "this kernel has no store: it was opened with dataDir: null",
        { details: { field: "dataDir" } },
      );
    }
    return this.#store ??= Store.open(
      this.#owner,
      this.buffers,
      this,
      this.#commits,
      this.#cluster,
    );
  }

  /** The transaction journal of the kernel's store. */
  get journal(): Journal {
    void this.store; // same checks
    return this.#journal ??= new Journal(this.#owner, this.#commits);
  }

  /** Runs untrusted commands in isolated, limited child processes. */
  get guard(): Guard {
    this.#assertOpen("Kernel.guard");
    return this.#guard ??= new Guard(this.#owner);
  }

  /** KNUL packet links between kernels (QUIC + TLS 1.3), delivered through rings. */
  get transport(): Transport {
    this.#assertOpen("Kernel.transport");
    return this.#transport ??= new Transport(this.#owner, this.#transportOptions);
  }

  /** The HTTP engine: native routes and proxying, JS handlers for the rest. */
  get http(): Http {
    this.#assertOpen("Kernel.http");
    return this.#http ??= new Http(this.#owner);
  }

  /** Supervised, sandboxed Deno runtimes: pools of child processes the kernel talks to. */
  get runtimes(): Runtimes {
    this.#assertOpen("Kernel.runtimes");
    return this.#runtimes ??= new Runtimes(this.#owner);
  }

  /** True once {@linkcode Kernel.close} was called. */
  get closed(): boolean {
    return this.#closing !== undefined;
  }

  #assertOpen(operation: string): void {
    if (this.#closing !== undefined) {
      throw new ClosedError(`${operation}: the kernel is closed`);
    }
  }

  /**
   * A snapshot of the kernel's counters (one synchronous FFI call).
   *
   * @throws {ClosedError} after `close()`.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * await using kernel = await Kernel.open({ dataDir: null });
   * console.log(kernel.stats().uptimeMs);
   * ```
   */
  stats(): KernelStats {
    this.#assertOpen("Kernel.stats");
    const bytes = this.#native.readOutput((out, cap) =>
      this.#native.symbols.krepis_kernel_stats(this.#handle, out, cap)
    );
    const stats = Stats.decode(bytes);
    const buffers = stats.buffers;
    const store = stats.store;
    return {
      kernelId: Number(stats.kernelId),
      version: stats.version,
      workerThreads: stats.workerThreads,
      aliveTasks: Number(stats.aliveTasks),
      uptimeMs: Number(stats.uptimeUs) / 1000,
      openKernels: stats.openKernels,
      dataDir: stats.dataDir === "" ? null : stats.dataDir,
      buffers: {
        liveBuffers: Number(buffers?.liveBuffers ?? 0),
        liveBytes: Number(buffers?.liveBytes ?? 0),
        leakedBuffers: Number(buffers?.leakedBuffers ?? 0),
        abandonedBuffers: Number(buffers?.abandonedBuffers ?? 0),
        liveRings: Number(buffers?.liveRings ?? 0),
        ringCapacityBytes: Number(buffers?.ringCapacityBytes ?? 0),
        ringUsedBytes: Number(buffers?.ringUsedBytes ?? 0),
      },
      store: store === undefined ? null : {
        nextTxId: Number(store.nextTxId),
        journalRecords: Number(store.journalRecords),
        commits: Number(store.commits),
        flushes: Number(store.flushes),
        sizeOnDiskBytes: Number(store.sizeOnDiskBytes),
        recovery: recoveryOf(store.recovery),
      },
      transport: {
        links: stats.transport?.links ?? 0,
        listeners: stats.transport?.listeners ?? 0,
        windowBytes: Number(stats.transport?.windowBytes ?? 0),
        maxWindowBytes: Number(stats.transport?.maxWindowBytes ?? 0),
        maxLinks: Number(stats.transport?.maxLinks ?? 0),
        linksRefused: Number(stats.transport?.linksRefused ?? 0),
      },
    };
  }

  /**
   * Stops the kernel's runtime (waiting up to `shutdownGraceMs` for its tasks)
   * and releases everything it owns: every view of its shared buffers and
   * rings is detached first. Idempotent: later calls resolve when the first
   * finishes. The kernel is closed even when this rejects.
   *
   * @throws {IoError} puts or deletes that returned could not be made durable
   * (the disk failed or is full, and no `store.flush()` reported it):
   * `details.lostWrites` says how many at most. Closing never waits for a
   * disk that stopped answering longer than `store.ioTimeoutMs`.
   *
   * @example
   * ```ts
   * import { Kernel } from "@krepis/sdk";
   * const kernel = await Kernel.open({ dataDir: null });
   * await kernel.close();
   * await kernel.close(); // no-op
   * ```
   */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      leaks.unregister(this);
      this.#owner.beginClose();
      this.#closing = (async () => {
        // Commits already submitted finish and report their real outcome.
        await this.#commits.idle();
        // Runtime pools stop restarting and their children are killed.
        await this.#runtimes?.closeAll();
        this.#native.check(await shutDown(this.#owner));
      })();
    }
    return this.#closing;
  }

  /** Closes the kernel (for `await using`). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
