/**
 * `kernel.runtimes`: Deno child processes the kernel starts, confines,
 * talks to and keeps alive. Each instance of a pool is a real `deno run` of
 * the application's module under exactly the Deno permission flags its typed
 * `permissions` name, inside the guard's sandbox that mirrors them (Landlock
 * read/write sets, no network unless `net` names hosts, cgroups/rlimits,
 * seccomp, no root). Requests and replies travel as checked frames over the
 * child's stdin and stdout (docs/runtimes.md); the child imports
 * `@krepis/sdk/runtime` to serve them.
 *
 * @module
 */

import type { Context } from "../context.ts";
import type { KernelOwner } from "../_owner.ts";
import {
  checkInteger,
  checkObject,
  checkOptions,
  checkStringList,
  invalidArgument,
} from "../_check.ts";
import { tenantHash } from "../_context.ts";
import { type GuardPolicy, guardRequest, type GuardStatus, type GuardViolation } from "../guard.ts";
import { ClosedError, ResourceExhaustedError, RuntimeError } from "../errors.ts";
import { FLAG_HTTP, FrameKind } from "./_frame.ts";
import { decodeHttp, encodeHttp, type HttpResponseHead } from "./_http.ts";
import { denoPermissionFlags, MAX_MESSAGE_ENV, type RuntimePermissions } from "./_flags.ts";
import { type ExitReason, Instance, type InstanceSpec } from "./_instance.ts";

export type { RuntimePermissions } from "./_flags.ts";

/** Default bound of one message (request, reply or child message), in bytes. */
export const DEFAULT_MAX_MESSAGE_BYTES: number = 1 << 20;
/** Largest `maxMessageBytes` (the kernel's bound). */
export const MAX_RUNTIME_MESSAGE_BYTES: number = 256 << 20;
const MAX_INSTANCES = 64;

/**
 * The guard's OS layers for a pool's instances (the file and network layers
 * come from `permissions`).
 *
 * @example
 * ```ts
 * import type { RuntimePolicy } from "@krepis/sdk";
 * const policy: RuntimePolicy = { maxMemoryBytes: 256 << 20, require: ["landlock", "seccomp"] };
 * ```
 */
export interface RuntimePolicy {
  /** Memory limit of each instance in bytes (cgroup; RLIMIT_AS without one). */
  maxMemoryBytes?: number;
  /** CPU time limit of each instance, in ms. */
  maxCpuMs?: number;
  /** Limit on processes and threads of each instance (cgroup pids; Deno has ~10 threads). */
  maxProcesses?: number;
  /** Wall-clock lifetime of each instance in ms (0 or absent: none). */
  timeoutMs?: number;
  /** Isolation layers that must be applied, else `UnsupportedError` (see `kernel.guard`). */
  require?: string[];
  /** What a root host's runtime gives up (default: it runs as uid/gid 65534). */
  privileges?: GuardPolicy["privileges"];
  /**
   * More paths the sandbox lets Deno itself read, without a Deno permission
   * (a `DENO_DIR` holding the module's remote dependencies, for example).
   */
  read?: string[];
}

/**
 * Restarting instances that ended on their own (crash, protocol violation,
 * failed health check, memory limit).
 *
 * @example
 * ```ts
 * import type { RuntimeRestart } from "@krepis/sdk";
 * const restart: RuntimeRestart = { maxRestarts: 5, backoffMs: 100 };
 * ```
 */
export interface RuntimeRestart {
  /** Restarts per instance before it is given up (default 5; 0 = never restart). */
  maxRestarts?: number;
  /** Wait before the first restart, doubled each time (default 100 ms). */
  backoffMs?: number;
  /** Longest wait between restarts (default 5000 ms). */
  maxBackoffMs?: number;
}

/**
 * Health checks: a ping answered from the runtime's event loop; one that
 * stays unanswered past `timeoutMs` gets the instance killed and restarted.
 *
 * @example
 * ```ts
 * import type { RuntimeHealth } from "@krepis/sdk";
 * const health: RuntimeHealth = { intervalMs: 500, timeoutMs: 1000 };
 * ```
 */
export interface RuntimeHealth {
  /** Between pings (default 1000 ms; 0 = no health checks). */
  intervalMs?: number;
  /** How long a ping may go unanswered (default 5000 ms). */
  timeoutMs?: number;
}

/**
 * What {@linkcode Runtimes.spawn} starts.
 *
 * @example
 * ```ts
 * import type { RuntimeSpawnOptions } from "@krepis/sdk";
 * const options: RuntimeSpawnOptions = {
 *   module: new URL("./plugin.ts", import.meta.url),
 *   instances: 2,
 *   permissions: { read: ["/srv/data/tenant-a"] },
 *   policy: { maxMemoryBytes: 256 << 20 },
 *   restart: { maxRestarts: 5, backoffMs: 100 },
 * };
 * ```
 */
export interface RuntimeSpawnOptions {
  /** The module to run: a `file:` URL or an absolute path. It calls `serve()` of `@krepis/sdk/runtime`. */
  module: string | URL;
  /** Instances in the pool (default 1, at most 64). */
  instances?: number;
  /** Deno permissions of each instance (default: none). */
  permissions?: RuntimePermissions;
  /** The guard's OS layers. */
  policy?: RuntimePolicy;
  /** Restarts of instances that end on their own. */
  restart?: RuntimeRestart;
  /** Health checks (default on), `false` for none. */
  health?: RuntimeHealth | false;
  /** The context the pool is started under (events carry its request id). */
  ctx?: Context;
  /** Bound of one message in either direction (default 1 MiB, at most 256 MiB). */
  maxMessageBytes?: number;
  /** Requests in flight per instance before requests wait (default 256). */
  maxInFlight?: number;
  /** How long an instance may take to load its module and call `serve()` (default 30000 ms). */
  startTimeoutMs?: number;
  /** Values of the variables `permissions.env` names (default: the parent's). */
  env?: Record<string, string>;
  /** The Deno executable (default `Deno.execPath()`). */
  denoPath?: string;
  /** Working directory of the instances (an absolute path). */
  cwd?: string;
}

/** Options of {@linkcode RuntimePool.request}. */
export interface RuntimeRequestOptions {
  /** Carried to the runtime (trace id, tenant, deadline); its deadline bounds the wait. */
  ctx?: Context;
  /** Bounds the wait, in ms (with `ctx.deadline`, the earlier one counts). */
  timeoutMs?: number;
}

/**
 * What happens to a pool's instances, from {@linkcode RuntimePool.events}.
 *
 * @example
 * ```ts
 * import type { RuntimeEvent } from "@krepis/sdk";
 * const describe = (event: RuntimeEvent) =>
 *   event.type === "exited" ? `${event.instance}: ${event.code ?? event.signal}` : event.type;
 * ```
 */
export type RuntimeEvent =
  | {
    /** The instance called `serve()`: it takes requests. */
    readonly type: "started";
    /** Which instance of the pool (0-based; kept across restarts). */
    readonly instance: number;
    /** Its process id. */
    readonly pid: number;
    /** From spawning the process to its `serve()`, in ms. */
    readonly startMs: number;
  }
  | {
    /** The instance's process ended (its requests in flight failed). */
    readonly type: "exited";
    /** Which instance of the pool. */
    readonly instance: number;
    /** The process that ended. */
    readonly pid: number;
    /** Exit code, or `null` when a signal ended it. */
    readonly code: number | null;
    /** The signal that ended it (`"SIGKILL"`...), or `null`. */
    readonly signal: string | null;
    /** Why. */
    readonly reason: RuntimeExitReason;
    /** What the reason refers to (the refused frame, the unanswered ping), or "". */
    readonly detail: string;
    /** The last 4 KiB the instance wrote to stderr. */
    readonly stderrTail: string;
    /** What the guard stopped or limited (reads, connects, memory...). */
    readonly violations: readonly GuardViolation[];
    /** The guard's isolation report: each layer applied, or not and why (null: kernel closed). */
    readonly isolation: GuardStatus["isolation"] | null;
  }
  | {
    /** A new process replaces an instance that ended (after the backoff). */
    readonly type: "restarted";
    /** Which instance of the pool. */
    readonly instance: number;
    /** The new process. */
    readonly pid: number;
    /** 1 for the instance's first restart. */
    readonly attempt: number;
  }
  | {
    /** The instance ended after `maxRestarts` restarts: it stays down. */
    readonly type: "gave_up";
    /** Which instance of the pool. */
    readonly instance: number;
    /** Restarts it had. */
    readonly restarts: number;
  }
  | {
    /** A runtime called `send()`. */
    readonly type: "message";
    /** Which instance sent it. */
    readonly instance: number;
    /** The message. */
    readonly data: Uint8Array;
  };

/**
 * Why an instance ended: `"crashed"` (on its own: an exit, a signal, a
 * guard limit), `"protocol"` (it wrote a frame the kernel refused),
 * `"unhealthy"` (a health check went unanswered), `"start_timeout"`,
 * `"closed"` (the pool or kernel closed).
 */
export type RuntimeExitReason = ExitReason;

/** One instance in {@linkcode RuntimePoolStats}. */
export interface RuntimeInstanceStats {
  /** Which instance of the pool. */
  readonly instance: number;
  /** The current process (0 while restarting). */
  readonly pid: number;
  /** Where it is in its life. */
  readonly state: "starting" | "ready" | "stopping" | "stopped" | "restarting" | "given_up";
  /** Requests sent to it and not answered yet. */
  readonly inFlight: number;
  /** Requests it got (all its processes). */
  readonly requests: number;
  /** Requests that failed on it. */
  readonly failures: number;
  /** Times it was restarted. */
  readonly restarts: number;
  /** CPU time of the current process (its tree where a cgroup measures it), in ms. */
  readonly cpuMs: number;
  /** Resident memory of the current process now, in bytes. */
  readonly rssBytes: number;
  /** Since the current process was spawned, in ms. */
  readonly uptimeMs: number;
}

/** A snapshot of a pool, from {@linkcode RuntimePool.stats}. */
export interface RuntimePoolStats {
  /** Each instance. */
  readonly instances: readonly RuntimeInstanceStats[];
  /** Requests sent and not answered yet. */
  readonly inFlight: number;
  /** Requests waiting for a free instance. */
  readonly queued: number;
  /** Requests made. */
  readonly requests: number;
  /** Requests that failed. */
  readonly failures: number;
  /** Restarts of all instances. */
  readonly restarts: number;
}

interface Slot {
  index: number;
  current: Instance | null;
  restarts: number;
  state: "running" | "restarting" | "given_up";
  timer: ReturnType<typeof setTimeout> | undefined;
  requests: number;
  failures: number;
}

interface Config {
  spec: InstanceSpec;
  instances: number;
  maxRestarts: number;
  backoffMs: number;
  maxBackoffMs: number;
  healthIntervalMs: number;
  healthTimeoutMs: number;
  maxInFlight: number;
  startTimeoutMs: number;
  maxMessageBytes: number;
}

const encoder = new TextEncoder();

function modulePath(module: unknown): string {
  let url: URL;
  try {
    url = module instanceof URL ? module : new URL(String(module), "file:///");
  } catch {
    invalidArgument("module", "must be a file: URL or an absolute path");
  }
  if (typeof module === "string" && !module.startsWith("/") && !module.startsWith("file:")) {
    invalidArgument("module", `must be a file: URL or an absolute path, got "${module}"`);
  }
  if (url.protocol !== "file:") {
    invalidArgument("module", `must be a file: URL, got ${url.protocol}`);
  }
  return decodeURIComponent(url.pathname);
}

function dirname(path: string): string {
  return path.slice(0, path.lastIndexOf("/")) || "/";
}

/** The directory of this SDK's files the child module imports (a local copy), or null. */
function sdkDirectory(): string | null {
  const url = new URL("../", import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname).replace(/\/$/, "") : null;
}

/** Where the parent's Deno caches remote modules (a JSR copy of the SDK lives there). */
function parentDenoDir(): string | null {
  try {
    const dir = Deno.env.get("DENO_DIR");
    if (dir) return dir;
    const home = Deno.env.get("HOME");
    return home ? `${home}/.cache/deno` : null;
  } catch {
    return null;
  }
}

/** True when this process runs as root (its runtimes then run as another uid). */
function rootHost(): boolean {
  try {
    return Deno.uid() === 0;
  } catch {
    return false; // without --allow-sys=uid: the pool's DENO_DIR keeps this process's owner
  }
}

/** The 24 bytes of KNUL context (tenant hash, W3C trace id) of `ctx`. */
function knulContext(ctx: Context): Uint8Array {
  const bytes = new Uint8Array(24);
  if (ctx.tenantId !== null) {
    new DataView(bytes.buffer).setBigUint64(0, tenantHash(ctx.tenantId), true);
  }
  if (ctx.traceId !== null && /^[0-9a-f]{32}$/i.test(ctx.traceId)) {
    for (let index = 0; index < 16; index++) {
      bytes[8 + index] = parseInt(ctx.traceId.slice(index * 2, index * 2 + 2), 16);
    }
  }
  return bytes;
}

/**
 * A pool of runtimes: `request()` goes to the least-busy ready instance;
 * instances that end on their own are restarted with backoff; `close()`
 * drains. Dispose it with `await using`.
 *
 * @example
 * ```ts ignore
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * await using pool = await kernel.runtimes.spawn({
 *   module: new URL("./plugin.ts", import.meta.url),
 *   instances: 2,
 * });
 * const reply = await pool.request(new TextEncoder().encode("job"));
 * console.log(new TextDecoder().decode(reply), pool.stats().instances.length);
 * ```
 */
export class RuntimePool implements AsyncDisposable {
  readonly #owner: KernelOwner;
  readonly #config: Config;
  readonly #slots: Slot[] = [];
  readonly #listeners = new Set<(event: RuntimeEvent | null) => void>();
  readonly #waiting: (() => void)[] = [];
  #nextId = 1;
  #rotate = 0;
  #requests = 0;
  #failures = 0;
  #restarts = 0;
  #health: ReturnType<typeof setInterval> | undefined;
  #closing: Promise<void> | undefined;
  #closed = false;
  #onClosed: (() => void) | undefined;
  readonly #ready: Promise<void>;
  #readyCount = 0;
  #settleReady: { resolve: () => void; reject: (error: Error) => void } | undefined;

  /** @internal Use `kernel.runtimes.spawn()`. */
  constructor(owner: KernelOwner, config: Config, onClosed: () => void) {
    this.#owner = owner;
    this.#config = config;
    this.#onClosed = onClosed;
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.#ready = promise;
    this.#settleReady = { resolve, reject };
    for (let index = 0; index < config.instances; index++) {
      this.#slots.push({
        index,
        current: null,
        restarts: 0,
        state: "running",
        timer: undefined,
        requests: 0,
        failures: 0,
      });
    }
  }

  /** @internal Starts every instance; resolves once all are ready. */
  async start(): Promise<void> {
    try {
      for (const slot of this.#slots) this.#launch(slot);
    } catch (error) {
      await this.#shutdown(0);
      throw error;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() =>
        reject(
          new RuntimeError(
            `the runtime did not call serve() within startTimeoutMs (${this.#config.startTimeoutMs} ms)`,
            { details: { reason: "start_timeout" } },
          ),
        ), this.#config.startTimeoutMs);
    });
    try {
      await Promise.race([this.#ready, timeout]);
    } catch (error) {
      await this.#shutdown(0);
      throw error;
    } finally {
      clearTimeout(timer);
    }
    if (this.#config.healthIntervalMs > 0) {
      this.#health = setInterval(() => this.#checkHealth(), this.#config.healthIntervalMs);
    }
  }

  #launch(slot: Slot): Instance {
    const instance = new Instance(this.#owner, slot.index, this.#config.spec, {
      ready: (ready) => this.#onReady(slot, ready),
      message: (from, data) => this.#emit({ type: "message", instance: from.index, data }),
      exited: (ended, status, reason, detail) => this.#onExit(slot, ended, status, reason, detail),
      settled: () => this.#wakeOne(),
    });
    slot.current = instance;
    slot.state = "running";
    return instance;
  }

  #onReady(slot: Slot, instance: Instance): void {
    this.#emit({
      type: "started",
      instance: slot.index,
      pid: instance.pid,
      startMs: performance.now() - instance.startedAt,
    });
    if (this.#settleReady !== undefined && ++this.#readyCount === this.#slots.length) {
      this.#settleReady.resolve();
      this.#settleReady = undefined;
    }
    this.#wakeAll();
  }

  #onExit(
    slot: Slot,
    instance: Instance,
    status: GuardStatus | null,
    reason: ExitReason,
    detail: string,
  ): void {
    this.#emit({
      type: "exited",
      instance: slot.index,
      pid: instance.pid,
      code: status?.code ?? null,
      signal: status?.signal ?? null,
      reason,
      detail,
      stderrTail: instance.stderrTail,
      violations: status?.violations ?? [],
      isolation: status?.isolation ?? null,
    });
    if (slot.current === instance) slot.current = null;
    if (this.#settleReady !== undefined && !this.#closed) {
      // It ended before it was ever ready: the module does not start.
      this.#settleReady.reject(
        new RuntimeError(
          `runtime instance ${slot.index} ended before it called serve() (${
            status?.signal ?? `exit code ${status?.code}`
          }): ${instance.stderrTail.trim().split("\n").slice(-5).join("\n")}`,
          { details: { reason: "start_failed", instance: String(slot.index) } },
        ),
      );
      this.#settleReady = undefined;
      return;
    }
    if (this.#closed || this.#owner.closed || reason === "closed") return;
    if (slot.restarts >= this.#config.maxRestarts) {
      slot.state = "given_up";
      this.#emit({ type: "gave_up", instance: slot.index, restarts: slot.restarts });
      if (this.#slots.every((other) => other.state === "given_up")) this.#wakeAll();
      return;
    }
    const delay = Math.min(
      this.#config.backoffMs * 2 ** slot.restarts,
      this.#config.maxBackoffMs,
    );
    slot.state = "restarting";
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      if (this.#closed || this.#owner.closed) return;
      slot.restarts++;
      this.#restarts++;
      try {
        const next = this.#launch(slot);
        this.#emit({
          type: "restarted",
          instance: slot.index,
          pid: next.pid,
          attempt: slot.restarts,
        });
      } catch {
        slot.state = "given_up";
        this.#emit({ type: "gave_up", instance: slot.index, restarts: slot.restarts });
        this.#wakeAll();
      }
    }, delay);
  }

  #checkHealth(): void {
    const now = performance.now();
    for (const slot of this.#slots) {
      const instance = slot.current;
      if (instance === null || instance.state !== "ready") continue;
      if (instance.pingSentAt !== 0) {
        if (now - instance.pingSentAt > this.#config.healthTimeoutMs) {
          instance.kill(
            "unhealthy",
            `no answer to a health check within ${this.#config.healthTimeoutMs} ms`,
          );
        }
        continue;
      }
      instance.ping();
    }
  }

  #emit(event: RuntimeEvent | null): void {
    for (const listener of this.#listeners) listener(event);
  }

  #wakeOne(): void {
    this.#waiting.shift()?.();
  }

  #wakeAll(): void {
    for (const wake of this.#waiting.splice(0)) wake();
  }

  /** The least-busy ready instance with a free slot, or null. */
  #pick(): Instance | null {
    let best: Instance | null = null;
    const count = this.#slots.length;
    for (let step = 0; step < count; step++) {
      const instance = this.#slots[(this.#rotate + step) % count].current;
      if (instance === null || instance.state !== "ready") continue;
      if (instance.pending.size >= this.#config.maxInFlight) continue;
      if (best === null || instance.pending.size < best.pending.size) best = instance;
    }
    this.#rotate = (this.#rotate + 1) % count;
    return best;
  }

  async #instance(deadline: number): Promise<Instance> {
    for (;;) {
      if (this.#closing !== undefined) throw new ClosedError("runtime pool: closed");
      const instance = this.#pick();
      if (instance !== null) return instance;
      if (this.#slots.every((slot) => slot.state === "given_up")) {
        throw new RuntimeError("runtime pool: every instance was given up", {
          details: { reason: "unavailable" },
        });
      }
      const { promise, resolve } = Promise.withResolvers<void>();
      this.#waiting.push(resolve);
      if (deadline === Infinity) {
        await promise;
        continue;
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const left = deadline - Date.now();
      if (left <= 0) throw this.#deadline();
      await Promise.race([promise, new Promise((r) => timer = setTimeout(r, left))]);
      clearTimeout(timer);
    }
  }

  #deadline(): RuntimeError {
    return new RuntimeError("runtime pool: the request's deadline passed", {
      details: { reason: "deadline" },
    });
  }

  /**
   * Sends `body` to the least-busy ready instance and resolves with its
   * reply. Waits (back-pressure) while every instance has `maxInFlight`
   * requests or its channel is full.
   *
   * @throws {ResourceExhaustedError} `body` (with the context) exceeds `maxMessageBytes`.
   * @throws {RuntimeError} the handler threw, the instance ended, or the deadline passed.
   * @throws {ClosedError} the pool is closing.
   */
  request(body: Uint8Array | string, options: RuntimeRequestOptions = {}): Promise<Uint8Array> {
    return this.#request(body, options, 0);
  }

  async #request(
    body: Uint8Array | string,
    options: RuntimeRequestOptions,
    flags: number,
  ): Promise<Uint8Array> {
    if (this.#closing !== undefined) throw new ClosedError("runtime pool: closed");
    checkOptions("request", options);
    const bytes = typeof body === "string" ? encoder.encode(body) : body;
    if (!(bytes instanceof Uint8Array)) invalidArgument("body", "must be a Uint8Array or a string");
    const ctx = options.ctx;
    const contextJson = ctx === undefined ? null : encoder.encode(JSON.stringify(ctx));
    const size = bytes.length + (contextJson?.length ?? 0);
    if (size > this.#config.maxMessageBytes) {
      throw new ResourceExhaustedError(
        `runtime pool: a request of ${size} bytes exceeds maxMessageBytes (${this.#config.maxMessageBytes})`,
        { details: { limit: String(this.#config.maxMessageBytes), field: "body" } },
      );
    }
    let deadline = ctx?.deadline ?? Infinity;
    if (options.timeoutMs !== undefined) {
      checkInteger("timeoutMs", options.timeoutMs, 0, 86_400_000);
      deadline = Math.min(deadline, Date.now() + options.timeoutMs);
    }
    this.#requests++;
    const instance = await this.#instance(deadline);
    const id = this.#nextId;
    this.#nextId = (this.#nextId + 1) >>> 0 || 1;
    const { promise, resolve, reject } = Promise.withResolvers<Uint8Array>();
    instance.pending.set(id, { resolve, reject });
    instance.requests++;
    const slot = this.#slots[instance.index];
    slot.requests++;
    let timer: ReturnType<typeof setTimeout> | undefined;
    if (deadline !== Infinity) {
      timer = setTimeout(() => {
        if (instance.pending.delete(id)) {
          reject(this.#deadline());
          this.#wakeOne();
        }
      }, Math.max(0, deadline - Date.now()));
    }
    try {
      const sent = instance.send(
        FrameKind.request,
        id,
        flags,
        ctx?.priority ?? 128,
        ctx === undefined ? null : knulContext(ctx),
        contextJson,
        bytes,
      );
      // The deadline also bounds a wait for room in a full channel.
      sent.catch(() => {});
      await Promise.race([sent, promise]);
      return await promise;
    } catch (error) {
      instance.pending.delete(id);
      this.#failures++;
      slot.failures++;
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Answers an HTTP request with one of the pool's runtimes (their `http`
   * handler): what `kernel.http.serve({ handler: pool })` calls.
   */
  async handleHttp(request: Request, info?: { context?: Context }): Promise<Response> {
    const body = request.method === "GET" || request.method === "HEAD"
      ? new Uint8Array()
      : new Uint8Array(await request.arrayBuffer());
    const payload = encodeHttp(
      { method: request.method, url: request.url, headers: [...request.headers] },
      body,
    );
    const reply = await this.#request(payload, { ctx: info?.context }, FLAG_HTTP);
    const { head, body: responseBody } = decodeHttp<HttpResponseHead>(reply);
    const empty = head.status === 204 || head.status === 304 || request.method === "HEAD";
    return new Response(empty ? null : responseBody as Uint8Array<ArrayBuffer>, {
      status: head.status,
      headers: head.headers,
    });
  }

  /**
   * Everything that happens to the pool's instances from now on, until the
   * pool closes: `started`, `exited` (code, signal, stderr tail, violations),
   * `restarted`, `gave_up`, and `message`s the runtimes send. Events that
   * arrive while the consumer is busy are buffered (the newest 1024).
   */
  async *events(): AsyncGenerator<RuntimeEvent> {
    const buffered: RuntimeEvent[] = [];
    let ended = this.#closed;
    let wake: (() => void) | undefined;
    const listener = (event: RuntimeEvent | null) => {
      if (event === null) ended = true;
      else {
        buffered.push(event);
        if (buffered.length > 1024) buffered.shift();
      }
      wake?.();
    };
    this.#listeners.add(listener);
    try {
      for (;;) {
        const event = buffered.shift();
        if (event !== undefined) {
          yield event;
          continue;
        }
        if (ended) return;
        await new Promise<void>((resolve) => wake = resolve);
        wake = undefined;
      }
    } finally {
      this.#listeners.delete(listener);
    }
  }

  /** Per-instance counters, CPU time and resident memory, now. */
  stats(): RuntimePoolStats {
    const instances = this.#slots.map((slot): RuntimeInstanceStats => {
      const instance = slot.current;
      const usage = instance?.usage() ?? { cpuMs: 0, rssBytes: 0 };
      return {
        instance: slot.index,
        pid: instance?.pid ?? 0,
        state: slot.state === "running" ? (instance?.state ?? "stopped") : slot.state,
        inFlight: instance?.pending.size ?? 0,
        requests: slot.requests,
        failures: slot.failures,
        restarts: slot.restarts,
        cpuMs: usage.cpuMs,
        rssBytes: usage.rssBytes,
        uptimeMs: instance === null ? 0 : performance.now() - instance.startedAt,
      };
    });
    return {
      instances,
      inFlight: instances.reduce((sum, instance) => sum + instance.inFlight, 0),
      queued: this.#waiting.length,
      requests: this.#requests,
      failures: this.#failures,
      restarts: this.#restarts,
    };
  }

  /**
   * Drains and stops the pool: no new requests; the ones in flight complete
   * within `graceMs` (default 5000); then each runtime's stdin closes (the
   * child module exits) and what is left of its process tree is killed.
   * Idempotent.
   */
  close(options: { graceMs?: number } = {}): Promise<void> {
    const grace = options.graceMs === undefined
      ? 5000
      : checkInteger("graceMs", options.graceMs, 0, 3_600_000);
    this.#closing ??= this.#shutdown(grace);
    return this.#closing;
  }

  async #shutdown(graceMs: number): Promise<void> {
    this.#closing ??= Promise.resolve();
    clearInterval(this.#health);
    for (const slot of this.#slots) clearTimeout(slot.timer);
    this.#wakeAll();
    const deadline = performance.now() + graceMs;
    const inFlight = () => this.#slots.some((slot) => (slot.current?.pending.size ?? 0) > 0);
    while (inFlight() && performance.now() < deadline && !this.#owner.closed) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    this.#closed = true;
    const live = this.#slots.map((slot) => slot.current).filter((i): i is Instance => i !== null);
    for (const instance of live) instance.closeInput();
    // The child module exits on its own once its stdin closed; whatever is
    // left after a short wait (or the grace) is killed with its tree.
    const exitWait = Math.max(100, Math.min(1000, deadline - performance.now()));
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(live.map((instance) => instance.ended)),
      new Promise((resolve) => timer = setTimeout(resolve, exitWait)),
    ]);
    clearTimeout(timer);
    for (const instance of live) instance.kill("closed", "the pool closed");
    await Promise.all(live.map((instance) => instance.ended.catch(() => {})));
    this.#emit(null);
    this.#onClosed?.();
    this.#onClosed = undefined;
  }

  /** Closes the pool (for `await using`). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * `kernel.runtimes`: start pools of supervised, sandboxed Deno runtimes.
 *
 * @example
 * ```ts ignore
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * await using pool = await kernel.runtimes.spawn({
 *   module: new URL("./plugin.ts", import.meta.url),
 *   permissions: { read: ["/srv/data/tenant-a"] },
 *   policy: { maxMemoryBytes: 256 << 20 },
 * });
 * for await (const event of pool.events()) console.log(event.type);
 * ```
 */
export class Runtimes {
  readonly #owner: KernelOwner;
  readonly #pools = new Set<RuntimePool>();
  /**
   * Private Deno dirs (module and code caches), one per trust domain: the
   * same module, Deno, flags and uid. Pools of one domain reuse it (a
   * respawn starts warm); pools of different ones never share a cache they
   * could write into. Removed when the kernel closes.
   */
  readonly #denoDirs = new Map<string, string>();

  /** @internal Use `kernel.runtimes`. */
  constructor(owner: KernelOwner) {
    this.#owner = owner;
  }

  /**
   * Starts a pool and resolves once every instance called `serve()`.
   *
   * @throws {InvalidArgumentError} naming the wrong option.
   * @throws {PermissionError} without `--allow-run` for the Deno executable.
   * @throws {RuntimeError} an instance ended before it was ready (`details.reason` `"start_failed"`;
   * the message holds its last stderr lines) or did not get ready in time (`"start_timeout"`).
   */
  async spawn(options: RuntimeSpawnOptions): Promise<RuntimePool> {
    this.#owner.assertOpen("runtimes.spawn");
    const config = this.#config(checkOptions("runtimes.spawn", options));
    const pool: RuntimePool = new RuntimePool(this.#owner, config, () => this.#pools.delete(pool));
    this.#pools.add(pool);
    await pool.start();
    return pool;
  }

  /** @internal Closes every pool (kernel close): in-flight requests get no grace. */
  async closeAll(): Promise<void> {
    await Promise.all([...this.#pools].map((pool) => pool.close({ graceMs: 0 })));
    for (const dir of this.#denoDirs.values()) {
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch {
        // already gone
      }
    }
    this.#denoDirs.clear();
  }

  #config(options: RuntimeSpawnOptions): Config {
    const module = modulePath(options.module);
    const instances = options.instances === undefined
      ? 1
      : checkInteger("instances", options.instances, 1, MAX_INSTANCES);
    const maxMessageBytes = options.maxMessageBytes === undefined
      ? DEFAULT_MAX_MESSAGE_BYTES
      : checkInteger("maxMessageBytes", options.maxMessageBytes, 1, MAX_RUNTIME_MESSAGE_BYTES);
    const restart = options.restart === undefined ? {} : checkObject("restart", options.restart);
    const number = (field: string, value: unknown, fallback: number, min: number, max: number) =>
      value === undefined ? fallback : checkInteger(field, value, min, max);
    const health = options.health === false
      ? { intervalMs: 0 }
      : options.health === undefined
      ? {}
      : checkObject("health", options.health);
    const permissions = denoPermissionFlags(options.permissions);
    const policy = options.policy === undefined ? {} : checkObject("policy", options.policy);
    const known = [
      "maxMemoryBytes",
      "maxCpuMs",
      "maxProcesses",
      "timeoutMs",
      "require",
      "privileges",
      "read",
    ];
    const unknown = Object.keys(policy).find((key) => !known.includes(key));
    if (unknown !== undefined) {
      invalidArgument(
        `policy.${unknown}`,
        `is not a runtime policy field (${
          known.join(", ")
        }; files and network come from permissions)`,
      );
    }
    const denoPath = options.denoPath ?? Deno.execPath();
    if (typeof denoPath !== "string" || denoPath === "") {
      invalidArgument("denoPath", "must be a path");
    }
    if (options.env !== undefined) {
      checkObject("env", options.env);
      if (Object.values(options.env).some((value) => typeof value !== "string")) {
        invalidArgument("env", "must map names to strings");
      }
    }
    // The children's own Deno dir (their module cache), writable by the uid
    // they run as, shared only within a trust domain.
    const privileges = (policy as RuntimePolicy).privileges;
    const domain = JSON.stringify([denoPath, module, permissions.flags, privileges ?? null]);
    let denoDir = this.#denoDirs.get(domain);
    if (denoDir === undefined) {
      denoDir = Deno.makeTempDirSync({ prefix: "krepis-runtime-" });
      if (Deno.build.os !== "windows" && rootHost() && privileges?.drop !== "keep") {
        Deno.chownSync(denoDir, privileges?.uid ?? 65534, privileges?.gid ?? 65534);
      }
      this.#denoDirs.set(domain, denoDir);
    }
    const env: Record<string, string> = {
      DENO_DIR: denoDir,
      HOME: denoDir,
      NO_COLOR: "1",
      DENO_NO_UPDATE_CHECK: "1",
      [MAX_MESSAGE_ENV]: String(maxMessageBytes),
    };
    for (const name of permissions.env) {
      const value = options.env?.[name] ?? Deno.env.get(name);
      if (value !== undefined) env[name] = value;
    }
    const sdk = sdkDirectory();
    const parentCache = sdk === null ? parentDenoDir() : null;
    const read = [
      ...permissions.read,
      ...permissions.ffi,
      ...permissions.run.filter((program) => program.startsWith("/")),
      dirname(module),
      dirname(denoPath),
      // Deno sizes its thread pools from the cgroup's CPU quota.
      "/sys/fs/cgroup",
      ...(sdk === null ? [] : [sdk]),
      ...(parentCache === null ? [] : [parentCache]),
      ...checkStringList("policy.read", (policy as RuntimePolicy).read),
    ];
    const guard = guardRequest(this.#owner, "runtimes.spawn", {
      cmd: denoPath,
      args: ["run", "--quiet", "--no-config", ...permissions.flags, module],
      cwd: options.cwd,
      env,
      policy: {
        read,
        write: [...permissions.write, denoDir],
        net: permissions.net.length > 0,
        maxMemoryBytes: (policy as RuntimePolicy).maxMemoryBytes,
        maxCpuMs: (policy as RuntimePolicy).maxCpuMs,
        maxProcesses: (policy as RuntimePolicy).maxProcesses,
        timeoutMs: (policy as RuntimePolicy).timeoutMs || undefined,
        require: (policy as RuntimePolicy).require,
        privileges,
      },
    }, false);
    return {
      spec: { guard, maxMessageBytes },
      instances,
      maxRestarts: number("restart.maxRestarts", restart.maxRestarts, 5, 0, 1_000_000),
      backoffMs: number("restart.backoffMs", restart.backoffMs, 100, 0, 3_600_000),
      maxBackoffMs: number("restart.maxBackoffMs", restart.maxBackoffMs, 5000, 0, 3_600_000),
      healthIntervalMs: number("health.intervalMs", health.intervalMs, 1000, 0, 3_600_000),
      healthTimeoutMs: number("health.timeoutMs", health.timeoutMs, 5000, 1, 3_600_000),
      maxInFlight: number("maxInFlight", options.maxInFlight, 256, 1, 1_000_000),
      startTimeoutMs: number("startTimeoutMs", options.startTimeoutMs, 30_000, 1, 3_600_000),
      maxMessageBytes,
    };
  }
}
