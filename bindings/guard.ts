/**
 * The guard: run a command the application must not trust in an isolated,
 * resource-limited child process. Deno's permission model is the first line
 * (the SDK checks `--allow-run` for the command); the kernel's sandbox is the
 * second.
 *
 * On Linux, each layer is applied when the host allows it and reported in
 * `isolation`: a new session, no root (a root host switches to an
 * unprivileged uid, `policy.privileges`), `no_new_privs`, no capabilities,
 * rlimits, Landlock file-system rules (`read`/`write` lists of absolute paths
 * plus the system's program directories) and signal scoping, a seccomp filter
 * (no ptrace, mounts, namespaces, keyrings, SysV IPC, bpf, io_uring, set-id
 * bits; without `net` no sockets but unix stream sockets of its own and no
 * `connect`), a network namespace when `net` is off, and cgroups (tracking
 * the whole tree, and for `maxProcesses`/`maxMemoryBytes`/`maxCpuMs`) when
 * writable. Every refusal is also reported in `violations`. macOS gets timeouts, output
 * limits, CPU rlimits and process-group kill; Windows timeouts, output
 * limits and a job object. A feature that was not applied is never claimed.
 *
 * @module
 */

import {
  GuardRequest,
  type GuardRequest as GuardRequestMessage,
  GuardResult as GuardResultMessage,
} from "./_gen/proto/krepis/v1/guard.ts";
import { ErrorCode } from "./_gen/proto/krepis/v1/error.ts";
import type { KernelOwner } from "./_owner.ts";
import { requirePermission } from "./_permissions.ts";
import { openRing, type RingReader } from "./_ring.ts";
import { checkStringList, invalidArgument } from "./_check.ts";
import { EventKind } from "./_events.ts";
import { ClosedError, InternalError, InvalidArgumentError } from "./errors.ts";

/**
 * What a command started by a root host gives up (Linux; ignored when the
 * host is not root, except `drop: "userns"`).
 */
export interface GuardPrivileges {
  /**
   * `"setuid"` (default): switch to `uid`/`gid` with no supplementary groups.
   * `"userns"`: the same, then a user namespace that maps no id (the kernel
   * then also refuses set-id programs and nested namespaces).
   * `"keep"`: stay uid 0 (without capabilities); reported as not applied.
   */
  drop?: "setuid" | "userns" | "keep";
  /** The user id to run as (default 65534, nobody). */
  uid?: number;
  /** The group id to run as (default 65534, nogroup). */
  gid?: number;
}

/** Limits and isolation of a guarded command. */
export interface GuardPolicy {
  /** Paths the command may read (program directories are always readable). */
  read?: string[];
  /** Paths the command may write. */
  write?: string[];
  /**
   * Allow network access (default false). Without it the command gets no
   * sockets but unix stream/seqpacket ones and cannot `connect` anywhere
   * (`socketpair` works): no IP, no host unix sockets (docker.sock, D-Bus),
   * no netlink or vsock.
   */
  net?: boolean;
  /** Memory limit in bytes (cgroup; RLIMIT_AS where cgroups are unavailable). */
  maxMemoryBytes?: number;
  /** CPU time limit in ms. */
  maxCpuMs?: number;
  /** Limit on processes (cgroup pids). */
  maxProcesses?: number;
  /** Wall-clock limit in ms; the whole tree is killed (SIGKILL) after it. */
  timeoutMs?: number;
  /** Limit on each of stdout and stderr; beyond it output is truncated and the tree killed. */
  maxOutputBytes?: number;
  /** Names of `env` entries passed through (default: all of `env`). */
  env?: string[];
  /** Isolation features that must be applied, else `UnsupportedError`. */
  require?: string[];
  /** What a root host's command gives up (default: it runs as uid/gid 65534). */
  privileges?: GuardPrivileges;
}

/** What to run. */
export interface GuardOptions {
  /** The executable (a path, or a name found on PATH). */
  cmd: string;
  /** Arguments. */
  args?: string[];
  /** Working directory. */
  cwd?: string;
  /** Environment of the command (nothing is inherited). */
  env?: Record<string, string>;
  /** Bytes written to the command's stdin, which is then closed. */
  stdin?: Uint8Array | string;
  /** Limits and isolation. */
  policy?: GuardPolicy;
}

/** A limit or isolation rule the command ran into. */
export interface GuardViolation {
  /**
   * "read", "write", "net", "syscall", "privilege" (set-id bits), "processes",
   * "memory", "cpu", "timeout", "output" or "orphans".
   */
  readonly kind: string;
  /** What happened. */
  readonly detail: string;
}

/** How a guarded command ended. */
export interface GuardStatus {
  /** Exit code, or `null` when killed by a signal. */
  readonly code: number | null;
  /** Signal name when killed by one. */
  readonly signal: string | null;
  /** Wall-clock time; CPU time and peak memory where the OS reports them (else 0). */
  readonly usage: { readonly wallMs: number; readonly cpuMs: number; readonly maxRssBytes: number };
  /** Every limit or rule it ran into. */
  readonly violations: readonly GuardViolation[];
  /** What isolation was applied, and what was not (with why). */
  readonly isolation: {
    readonly applied: readonly string[];
    readonly notApplied: readonly string[];
    /** The user and group ids the command ran as (null where unknown). */
    readonly runAs: { readonly uid: number; readonly gid: number } | null;
  };
  /** stdout was cut at `maxOutputBytes`. */
  readonly stdoutTruncated: boolean;
  /** stderr was cut at `maxOutputBytes`. */
  readonly stderrTruncated: boolean;
}

/** {@linkcode GuardStatus} plus the collected output. */
export interface GuardResult extends GuardStatus {
  /** Everything the command wrote to stdout (up to `maxOutputBytes`). */
  readonly stdout: Uint8Array;
  /** Everything the command wrote to stderr (up to `maxOutputBytes`). */
  readonly stderr: Uint8Array;
}

const OUTPUT_RING_BYTES = 64 * 1024;

function outputStream(ring: RingReader): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        if (ring.detached) {
          controller.close();
          return;
        }
        const record = ring.read();
        if (record !== null) {
          controller.enqueue((record.data as Uint8Array).slice());
          return;
        }
        if (ring.closed && ring.available === 0) {
          ring.close();
          controller.close();
          return;
        }
        await ring.wait(60_000);
      }
    },
    cancel() {
      ring.close();
    },
  });
}

/**
 * Waits for a guarded process to end; its status and any collected output,
 * then releases its handle (SDK-internal: the runtimes wait for their Deno
 * children the same way). The kernel posts an event when the result is
 * ready, read with a synchronous call: no Deno worker thread waits.
 */
export async function waitFor(
  owner: KernelOwner,
  handle: number,
): Promise<{ status: GuardStatus; stdout: Uint8Array; stderr: Uint8Array }> {
  const { native } = owner;
  let out = new Uint8Array(64 * 1024);
  for (;;) {
    if (owner.closed) throw new ClosedError("the kernel closed while the command ran");
    const length = native.symbols.krepis_guard_result(handle, out, out.length);
    if (
      length === -ErrorCode.ERROR_CODE_CLOSED || length === -ErrorCode.ERROR_CODE_INVALID_HANDLE
    ) {
      throw new ClosedError("the guarded process was released (kernel closed)");
    }
    if (length < 0) throw new InternalError(`waiting for a guarded process failed (${length})`);
    if (length > out.length) {
      out = new Uint8Array(length); // the result is kept: read it again
      continue;
    }
    if (length === 0) {
      // Still running: the kernel announces the result (or its own close).
      await owner.events.wait(EventKind.guard, handle);
      continue;
    }
    const result = GuardResultMessage.decode(out.subarray(0, length));
    native.symbols.krepis_guard_close(handle);
    return {
      status: {
        code: result.signal === "" ? result.code : null,
        signal: result.signal === "" ? null : result.signal,
        usage: {
          wallMs: Number(result.usage?.wallMs ?? 0),
          cpuMs: Number(result.usage?.cpuMs ?? 0),
          maxRssBytes: Number(result.usage?.maxRssBytes ?? 0),
        },
        violations: result.violations.map(({ kind, detail }) => ({ kind, detail })),
        isolation: {
          applied: result.isolation?.applied ?? [],
          notApplied: result.isolation?.notApplied ?? [],
          runAs: result.isolation?.runAs === undefined
            ? null
            : { uid: result.isolation.runAs.uid, gid: result.isolation.runAs.gid },
        },
        stdoutTruncated: result.stdoutTruncated,
        stderrTruncated: result.stderrTruncated,
      },
      stdout: result.stdout,
      stderr: result.stderr,
    };
  }
}

function checkPaths(field: string, value: unknown): string[] {
  const paths = checkStringList(field, value);
  const relative = paths.find((path) => !/^(\/|[A-Za-z]:[\\/])/.test(path));
  if (relative !== undefined) {
    invalidArgument(field, `must hold absolute paths, got "${relative}"`);
  }
  return paths;
}

function checkId(field: string, value: unknown): number {
  if (value === undefined) return 0;
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0 || value >= 0xffffffff) {
    invalidArgument(field, 'must be an id from 1 to 4294967294 (root is `drop: "keep"`)');
  }
  return value;
}

function checkPrivileges(
  value: unknown,
): { drop: string; uid: number; gid: number } | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "object" || value === null) {
    invalidArgument("policy.privileges", "must be an object");
  }
  const { drop, uid, gid } = value as GuardPrivileges;
  if (drop !== undefined && drop !== "setuid" && drop !== "userns" && drop !== "keep") {
    invalidArgument("policy.privileges.drop", 'must be "setuid", "userns" or "keep"');
  }
  return {
    drop: drop ?? "",
    uid: checkId("policy.privileges.uid", uid),
    gid: checkId("policy.privileges.gid", gid),
  };
}

function checkLimit(field: string, value: unknown): number {
  if (value === undefined) return 0;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
    invalidArgument(field, "must be a positive integer");
  }
  return value;
}

/**
 * Checks `options` and builds the kernel's request (SDK-internal: the guard
 * and the runtimes, which start Deno through the guard, share it).
 *
 * @throws {InvalidArgumentError} naming the wrong field.
 * @throws {PermissionError} without `--allow-run` for the command.
 */
export function guardRequest(
  owner: KernelOwner,
  operation: string,
  options: GuardOptions,
  collect: boolean,
): GuardRequestMessage {
  owner.assertOpen(operation);
  if (
    typeof options !== "object" || options === null || typeof options.cmd !== "string" ||
    options.cmd === ""
  ) {
    throw new InvalidArgumentError("guard: cmd must be a non-empty string", {
      details: { field: "cmd" },
    });
  }
  requirePermission(
    { name: "run", command: options.cmd },
    `running ${options.cmd}`,
    `--allow-run=${options.cmd}`,
  );
  const policy = options.policy ?? {};
  const env = options.env ?? {};
  if (typeof env !== "object" || Object.values(env).some((v) => typeof v !== "string")) {
    throw new InvalidArgumentError("guard: env must map names to strings", {
      details: { field: "env" },
    });
  }
  return {
    cmd: options.cmd,
    args: checkStringList("args", options.args),
    cwd: options.cwd ?? "",
    env,
    stdin: typeof options.stdin === "string"
      ? new TextEncoder().encode(options.stdin)
      : options.stdin ?? new Uint8Array(),
    policy: {
      read: checkPaths("policy.read", policy.read),
      write: checkPaths("policy.write", policy.write),
      net: policy.net === true,
      maxMemoryBytes: BigInt(checkLimit("policy.maxMemoryBytes", policy.maxMemoryBytes)),
      maxCpuMs: BigInt(checkLimit("policy.maxCpuMs", policy.maxCpuMs)),
      maxProcesses: checkLimit("policy.maxProcesses", policy.maxProcesses),
      timeoutMs: BigInt(checkLimit("policy.timeoutMs", policy.timeoutMs)),
      maxOutputBytes: BigInt(checkLimit("policy.maxOutputBytes", policy.maxOutputBytes)),
      envAllow: checkStringList("policy.env", policy.env),
      require: checkStringList("policy.require", policy.require),
      privileges: checkPrivileges(policy.privileges),
    },
    collectOutput: collect,
  };
}

/**
 * A running guarded command: stream its output, wait for `status`, `kill()` it.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * await using child = kernel.guard.spawn({ cmd: "/bin/echo", args: ["hi"] });
 * for await (const chunk of child.stdout) console.log(new TextDecoder().decode(chunk));
 * console.log((await child.status).code); // 0
 * ```
 */
export class GuardedProcess implements AsyncDisposable {
  /** The command's stdout. */
  readonly stdout: ReadableStream<Uint8Array>;
  /** The command's stderr. */
  readonly stderr: ReadableStream<Uint8Array>;
  /** Resolves when the command (and its whole tree) has stopped. */
  readonly status: Promise<GuardStatus>;
  readonly #owner: KernelOwner;
  readonly #handle: number;

  /** @internal Use `kernel.guard.spawn()`. */
  constructor(owner: KernelOwner, handle: number, stdout: RingReader, stderr: RingReader) {
    this.#owner = owner;
    this.#handle = handle;
    this.stdout = outputStream(stdout);
    this.stderr = outputStream(stderr);
    this.status = this.#wait();
  }

  #wait(): Promise<GuardStatus> {
    return waitFor(this.#owner, this.#handle).then(({ status }) => status);
  }

  /** Kills the command and its whole tree (idempotent). */
  kill(): void {
    if (!this.#owner.closed) this.#owner.native.symbols.krepis_guard_kill(this.#handle);
  }

  /** Kills the command if still running and waits for it to stop. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.kill();
    await this.status.catch(() => {});
  }
}

/**
 * `kernel.guard`: run untrusted commands.
 *
 * @example
 * ```ts
 * import { Kernel } from "@krepis/sdk";
 * await using kernel = await Kernel.open({ dataDir: null });
 * const result = await kernel.guard.run({
 *   cmd: "/bin/cat",
 *   args: ["/etc/hostname"],
 *   policy: { read: [], timeoutMs: 1_000 },
 * });
 * console.log(result.code, result.violations); // 1 [{ kind: "read", detail: "/etc/hostname" }]
 * ```
 */
export class Guard {
  readonly #owner: KernelOwner;

  /** @internal Use `kernel.guard`. */
  constructor(owner: KernelOwner) {
    this.#owner = owner;
  }

  /** Checks and encodes a request (SDK-internal). */
  #encode(options: GuardOptions, collect: boolean): Uint8Array<ArrayBuffer> {
    const operation = collect ? "guard.run" : "guard.spawn";
    return GuardRequest.encode(guardRequest(this.#owner, operation, options, collect)).finish();
  }

  /** Starts a command under the guard; see {@linkcode GuardedProcess}. */
  spawn(options: GuardOptions): GuardedProcess {
    const request = this.#encode(options, false);
    const stdout = openRing(this.#owner, { capacity: OUTPUT_RING_BYTES, direction: "toJs" });
    const stderr = openRing(this.#owner, { capacity: OUTPUT_RING_BYTES, direction: "toJs" });
    const { native } = this.#owner;
    const out = new Uint32Array(1);
    try {
      native.check(
        native.symbols.krepis_guard_spawn(
          this.#owner.handle,
          request,
          request.length,
          stdout.nativeHandle,
          stderr.nativeHandle,
          out,
        ),
      );
    } catch (error) {
      stdout.close();
      stderr.close();
      throw error;
    }
    return new GuardedProcess(this.#owner, out[0], stdout, stderr);
  }

  /**
   * Runs a command to the end and collects its output (in the kernel, up to
   * `maxOutputBytes` or 64 MiB per stream): one wait, no streams.
   */
  async run(options: GuardOptions): Promise<GuardResult> {
    const request = this.#encode(options, true);
    const { native } = this.#owner;
    const out = new Uint32Array(1);
    native.check(
      native.symbols.krepis_guard_spawn(this.#owner.handle, request, request.length, 0, 0, out),
    );
    const { status, stdout, stderr } = await waitFor(this.#owner, out[0]);
    return { ...status, stdout, stderr };
  }
}
