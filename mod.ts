/**
 * `@krepis/sdk`: native speed inside a Deno application.
 *
 * The SDK loads a prebuilt Rust kernel through Deno FFI (verified by SHA-256
 * and pinned to this exact version and ABI) and exposes it as typed APIs.
 *
 * ```ts
 * import { createContext, Kernel } from "@krepis/sdk";
 *
 * await using kernel = await Kernel.open();   // data in ./.krepis
 * console.log(kernel.version, kernel.stats());
 * kernel.store.put("user:1", "alice");          // durable KV store + journal
 * const ctx = createContext({ tenantId: "acme", timeoutMs: 500 });
 * ```
 *
 * Permissions: `--allow-ffi`, read/write for the data dir, and `--allow-net`
 * for the one-time library download (or `KREPIS_LIBRARY_PATH` with
 * `--allow-env=KREPIS_LIBRARY_PATH` to use a local build).
 *
 * @module
 */

export {
  type ClusterOptions,
  Kernel,
  type KernelOptions,
  type KernelStats,
  MAX_WORKER_THREADS,
  type StoreOptions,
  type StoreRecovery,
  type StoreStats,
  type TransportStats,
} from "./bindings/kernel.ts";
export {
  type CommitCheck,
  type CommitOp,
  type CommitOptions,
  type CommitResult,
  JsonStore,
  type ReplicaState,
  type ScanOptions,
  Store,
  type StoreBytes,
  type StoreChange,
  type StoreEntry,
  type StoreKey,
  StoreScan,
  StoreValue,
  StoreWatch,
  type SyncOptions,
} from "./bindings/store/store.ts";
export { Journal, type JournalReadOptions, type JournalRecord } from "./bindings/store/journal.ts";
export {
  Buffers,
  type BufferStats,
  MAX_BUFFER_BYTES,
  type ReadonlyBytes,
  SharedBuffer,
} from "./bindings/buffers.ts";
export {
  Guard,
  GuardedProcess,
  type GuardOptions,
  type GuardPolicy,
  type GuardPrivileges,
  type GuardResult,
  type GuardStatus,
  type GuardViolation,
} from "./bindings/guard.ts";
export {
  DEFAULT_MAX_MESSAGE_BYTES,
  MAX_RUNTIME_MESSAGE_BYTES,
  type RuntimeEvent,
  type RuntimeExitReason,
  type RuntimeHealth,
  type RuntimeInstanceStats,
  type RuntimePermissions,
  type RuntimePolicy,
  RuntimePool,
  type RuntimePoolStats,
  type RuntimeRequestOptions,
  type RuntimeRestart,
  Runtimes,
  type RuntimeSpawnOptions,
} from "./bindings/runtimes/runtimes.ts";
export {
  type ConnectOptions,
  DEFAULT_MAX_PACKET_BYTES,
  type DevCertificate,
  type DevCertificateOptions,
  Listener,
  type ListenerStats,
  type ListenOptions,
  MAX_PACKET_BYTES,
  type NetAddr,
  Transport,
  type TransportOptions,
} from "./bindings/transport/transport.ts";
export {
  Link,
  type LinkCloseInfo,
  type LinkCloseOptions,
  type LinkStats,
  Packet,
  type SendOptions,
} from "./bindings/transport/link.ts";
export {
  DEFAULT_HTTP_GRACE_MS,
  Http,
  type HttpErrorHandler,
  type HttpHandler,
  type HttpHandlerObject,
  type HttpHealthCheck,
  type HttpLimits,
  type HttpLoadBalancingMode,
  type HttpMatch,
  type HttpProxyOptions,
  type HttpRequestInfo,
  type HttpRespond,
  type HttpRoute,
  type HttpServeOptions,
  HttpServer,
  type HttpServerStats,
  type HttpShutdownOptions,
  type HttpUpstreamStats,
} from "./bindings/http/http.ts";
export {
  type Context,
  type ContextInit,
  createContext,
  MAX_CONTEXT_ID_BYTES,
  Priority,
  remainingMs,
} from "./bindings/context.ts";
export {
  type AbiMismatch,
  AbiMismatchError,
  ClosedError,
  ConflictError,
  ConnectionError,
  CorruptError,
  IntegrityError,
  InternalError,
  InvalidArgumentError,
  IoError,
  KrepisError,
  type KrepisErrorCode,
  type KrepisErrorOptions,
  LoadError,
  LockedError,
  NativePanicError,
  NotFoundError,
  PermissionError,
  ProtocolError,
  ResourceExhaustedError,
  RuntimeError,
  UnsupportedError,
} from "./bindings/errors.ts";
export { type LibraryOptions } from "./bindings/_loader.ts";
export { VERSION } from "./bindings/_version.ts";
