/**
 * One instance of a runtime pool: a guarded Deno child, its channel (a JS →
 * kernel ring to its stdin, a kernel → JS ring of checked frames from its
 * stdout), its stderr (the last lines are kept for crash events), the
 * requests in flight on it and its health (pings answered from the child's
 * event loop). The pool decides what happens when it ends.
 *
 * @module
 */

import { RuntimeSpawn } from "../_gen/proto/krepis/v1/runtimes.ts";
import type { GuardRequest } from "../_gen/proto/krepis/v1/guard.ts";
import { GuardUsage } from "../_gen/proto/krepis/v1/guard.ts";
import type { KernelOwner } from "../_owner.ts";
import { openRing, recordSize, type RingReader, type RingWriter } from "../_ring.ts";
import { type GuardStatus, waitFor } from "../guard.ts";
import { ClosedError, ProtocolError, RuntimeError } from "../errors.ts";
import {
  FRAME_HEADER_BYTES,
  FrameKind,
  readFrameHeader,
  RECORD_PROTOCOL_ERROR,
  writeFrameHeader,
} from "./_frame.ts";

/** Bytes of stderr kept for crash events. */
const STDERR_TAIL_BYTES = 4096;
const STDERR_RING_BYTES = 64 * 1024;

/** Why an instance ended, as events and errors name it. */
export type ExitReason = "crashed" | "protocol" | "unhealthy" | "closed" | "start_timeout";

/** A request waiting for its reply. */
export interface Pending {
  resolve(payload: Uint8Array): void;
  reject(error: Error): void;
}

/** What an instance tells its pool. */
export interface InstanceHooks {
  ready(instance: Instance): void;
  message(instance: Instance, data: Uint8Array): void;
  exited(instance: Instance, status: GuardStatus | null, reason: ExitReason, detail: string): void;
  /** A request on it settled: a slot is free. */
  settled(instance: Instance): void;
}

/** What starting an instance needs. */
export interface InstanceSpec {
  guard: GuardRequest;
  maxMessageBytes: number;
}

function ringCapacity(maxMessageBytes: number): number {
  const need = recordSize(FRAME_HEADER_BYTES + maxMessageBytes) * 2;
  let capacity = 64 * 1024;
  while (capacity < need) capacity *= 2;
  return capacity;
}

/** One Deno child of a pool. */
export class Instance {
  readonly index: number;
  readonly pid: number;
  readonly startedAt: number = performance.now();
  state: "starting" | "ready" | "stopping" | "stopped" = "starting";
  readonly pending: Map<number, Pending> = new Map();
  requests = 0;
  failures = 0;
  /** Ping sent and not answered yet (performance.now() when sent), or 0. */
  pingSentAt = 0;
  readonly #owner: KernelOwner;
  readonly #hooks: InstanceHooks;
  readonly #handle: number;
  readonly #toChild: RingWriter;
  readonly #fromChild: RingReader;
  readonly #stderr: RingReader;
  #stderrTail = "";
  #reason: ExitReason = "crashed";
  #detail = "";
  #pingId = 0;
  readonly #decoder = new TextDecoder();
  /** Resolves when the process ended and its rings are closed. */
  readonly ended: Promise<void>;

  constructor(owner: KernelOwner, index: number, spec: InstanceSpec, hooks: InstanceHooks) {
    this.#owner = owner;
    this.index = index;
    this.#hooks = hooks;
    const capacity = ringCapacity(spec.maxMessageBytes);
    const toChild = openRing(owner, { capacity, direction: "toKernel" });
    const fromChild = openRing(owner, { capacity, direction: "toJs" });
    const stderr = openRing(owner, { capacity: STDERR_RING_BYTES, direction: "toJs" });
    const request = RuntimeSpawn.encode({
      guard: spec.guard,
      maxMessageBytes: spec.maxMessageBytes,
    }).finish();
    const out = new Uint32Array(2);
    try {
      owner.native.check(
        owner.native.symbols.krepis_runtime_spawn(
          owner.handle,
          request,
          request.length,
          toChild.nativeHandle,
          fromChild.nativeHandle,
          stderr.nativeHandle,
          out,
        ),
      );
    } catch (error) {
      toChild.close();
      fromChild.close();
      stderr.close();
      throw error;
    }
    this.#handle = out[0];
    this.pid = out[1];
    this.#toChild = toChild;
    this.#fromChild = fromChild;
    this.#stderr = stderr;
    const frames = this.#readFrames();
    const errors = this.#readStderr();
    this.ended = this.#wait(frames, errors);
  }

  /** Sends a frame; waits for ring space (back-pressure). */
  async send(
    kind: number,
    id: number,
    flags: number,
    priority: number,
    context: Uint8Array | null,
    contextJson: Uint8Array | null,
    body: Uint8Array,
  ): Promise<void> {
    const contextLength = contextJson?.length ?? 0;
    const length = contextLength + body.length;
    const writer = this.#toChild;
    for (;;) {
      if (this.state === "stopped" || writer.closed) {
        throw new RuntimeError(`runtime instance ${this.index} ended`, {
          details: { reason: this.#reason, instance: String(this.index) },
        });
      }
      const at = writer.reserve(FRAME_HEADER_BYTES + length, 0);
      if (at >= 0) {
        const data = writer.data;
        writeFrameHeader(data, at, { kind, flags, priority, length, id, contextLength }, context);
        if (contextJson !== null) data.set(contextJson, at + FRAME_HEADER_BYTES);
        data.set(body, at + FRAME_HEADER_BYTES + contextLength);
        writer.flush();
        return;
      }
      await writer.waitForSpace(recordSize(FRAME_HEADER_BYTES + length));
    }
  }

  /** Sends a health check; the pong clears `pingSentAt`. */
  ping(): void {
    if (this.state !== "ready" || this.pingSentAt !== 0) return;
    this.pingSentAt = performance.now();
    this.send(FrameKind.ping, ++this.#pingId, 0, 255, null, null, new Uint8Array()).catch(() => {});
  }

  /** Ends the process (its whole tree) now, naming why. */
  kill(reason: ExitReason, detail: string): void {
    if (this.state === "stopped") return;
    if (this.#reason === "crashed") {
      this.#reason = reason;
      this.#detail = detail;
    }
    this.state = "stopping";
    if (!this.#owner.closed) this.#owner.native.symbols.krepis_guard_kill(this.#handle);
  }

  /** Closes its stdin: the child module answers what it has and exits. */
  closeInput(): void {
    if (this.#reason === "crashed") this.#reason = "closed";
    if (this.state !== "stopped") this.state = "stopping";
    if (!this.#toChild.detached) this.#toChild.close();
  }

  /** CPU time so far and resident memory now (0 where unknown or ended). */
  usage(): { cpuMs: number; rssBytes: number } {
    if (this.state === "stopped" || this.#owner.closed) return { cpuMs: 0, rssBytes: 0 };
    const native = this.#owner.native;
    try {
      const usage = GuardUsage.decode(
        native.readOutput((out, cap) => native.symbols.krepis_guard_usage(this.#handle, out, cap)),
      );
      return { cpuMs: Number(usage.cpuMs), rssBytes: Number(usage.rssBytes) };
    } catch {
      return { cpuMs: 0, rssBytes: 0 };
    }
  }

  #frame = (data: Uint8Array, offset: number, length: number, tag: number): void => {
    if (tag === RECORD_PROTOCOL_ERROR) {
      this.#reason = "protocol";
      this.#detail = this.#decoder.decode(data.subarray(offset, offset + length));
      return;
    }
    const header = readFrameHeader(data, offset);
    const payload = () => data.slice(offset + FRAME_HEADER_BYTES, offset + length);
    switch (header.kind) {
      case FrameKind.reply:
      case FrameKind.fail: {
        const pending = this.pending.get(header.id);
        if (pending === undefined) return; // its deadline passed: the answer is dropped
        this.pending.delete(header.id);
        if (header.kind === FrameKind.reply) {
          pending.resolve(payload());
        } else {
          this.failures++;
          pending.reject(
            new RuntimeError(this.#decoder.decode(payload()), {
              details: { reason: "handler", instance: String(this.index) },
            }),
          );
        }
        this.#hooks.settled(this);
        return;
      }
      case FrameKind.pong:
        this.pingSentAt = 0;
        return;
      case FrameKind.ready:
        if (this.state === "starting") {
          this.state = "ready";
          this.#hooks.ready(this);
        }
        return;
      case FrameKind.message:
        this.#hooks.message(this, payload());
        return;
    }
  };

  async #readFrames(): Promise<void> {
    const reader = this.#fromChild;
    while (!reader.detached) {
      if (reader.drain(this.#frame) > 0) continue;
      if (reader.closed && reader.available === 0) break;
      await reader.wait();
    }
  }

  async #readStderr(): Promise<void> {
    const reader = this.#stderr;
    const visit = (data: Uint8Array, offset: number, length: number) => {
      const text = this.#decoder.decode(data.subarray(offset, offset + length), { stream: true });
      this.#stderrTail = (this.#stderrTail + text).slice(-STDERR_TAIL_BYTES);
    };
    while (!reader.detached) {
      if (reader.drain(visit) > 0) continue;
      if (reader.closed && reader.available === 0) break;
      await reader.wait();
    }
  }

  /** The last lines the child wrote to stderr. */
  get stderrTail(): string {
    return this.#stderrTail;
  }

  async #wait(frames: Promise<void>, errors: Promise<void>): Promise<void> {
    let status: GuardStatus | null = null;
    try {
      status = (await waitFor(this.#owner, this.#handle)).status;
    } catch (error) {
      if (!(error instanceof ClosedError)) throw error;
      this.#reason = "closed";
    }
    // The kernel closes both rings once the child's output ended.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all([frames, errors]),
      new Promise((resolve) => timer = setTimeout(resolve, 1000)),
    ]).catch(() => {});
    clearTimeout(timer);
    this.state = "stopped";
    const reason = this.#reason;
    const why = reason === "protocol"
      ? new ProtocolError(`runtime instance ${this.index} broke the channel: ${this.#detail}`, {
        details: { instance: String(this.index) },
      })
      : null;
    for (const [id, pending] of this.pending) {
      this.pending.delete(id);
      this.failures++;
      pending.reject(
        reason === "closed" && this.#owner.closed
          ? new ClosedError("the kernel closed while the request ran")
          : new RuntimeError(
            `runtime instance ${this.index} ended (${reason}${
              status?.signal ? `, ${status.signal}` : status ? `, exit code ${status.code}` : ""
            }) with the request in flight`,
            {
              cause: why ?? undefined,
              details: { reason, instance: String(this.index) },
            },
          ),
      );
    }
    for (const ring of [this.#toChild, this.#fromChild, this.#stderr]) {
      try {
        ring.close();
      } catch {
        // the kernel closed: nothing to free
      }
    }
    this.#hooks.exited(this, status, reason, this.#detail);
  }
}
