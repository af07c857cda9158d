/**
 * The HTTP bridge's JS → kernel records (response heads and bodies, credits,
 * aborts) in order: straight into the ring when it has room, else into a
 * backlog that drains as the kernel frees space, so nothing overtakes a
 * waiting record. Records of one microtask wave are published with one store.
 *
 * @module
 */

import { KREPIS_HTTP_TO_KERNEL_RESPONSE } from "../_gen/symbols.ts";
import { recordSize, type RingWriter } from "../_ring.ts";

/** Writes `text` at `offset`, one byte per code unit (code units are below 256). */
function writeByteString(data: Uint8Array, offset: number, text: string): void {
  for (let index = 0; index < text.length; index++) data[offset + index] = text.charCodeAt(index);
}

/** A record waiting for ring space. */
interface Pending {
  tag: number;
  id: number;
  word1: number;
  word2: number;
  word3: number;
  headWords: number;
  payload: Uint8Array;
}

/** Writes one server's JS → kernel ring (the ring has a single producer: this). */
export class RecordWriter {
  readonly #ring: RingWriter;
  readonly #words: Uint32Array;
  /** Records waiting for ring space, in order: nothing may overtake them. */
  readonly #backlog: Pending[] = [];
  #backlogDraining = false;
  #flushQueued = false;
  #stopped = false;
  readonly #flushTask: () => void;

  constructor(ring: RingWriter) {
    this.#ring = ring;
    const data = ring.data;
    this.#words = new Uint32Array(data.buffer, data.byteOffset, data.length >> 2);
    this.#flushTask = () => {
      this.#flushQueued = false;
      if (!this.#ring.detached) this.#ring.flush();
    };
  }

  /**
   * Writes one record: `id`, `word1` and (with `headWords` 3) `word2`, then
   * `payload` (copied). Queued behind earlier records still waiting for space;
   * dropped once stopped or once the ring is gone.
   */
  put(
    tag: number,
    id: number,
    word1: number,
    word2: number,
    headWords: number,
    payload: Uint8Array,
  ): void {
    const writer = this.#ring;
    if (this.#stopped || writer.detached) return;
    if (
      this.#backlog.length === 0 && this.#tryPut(tag, id, word1, word2, 0, headWords, payload)
    ) {
      this.#scheduleFlush();
      return;
    }
    this.#queue({ tag, id, word1, word2, word3: 0, headWords, payload: payload.slice() });
  }

  /**
   * Writes a RESPONSE record, `[id][status][flags][lines length]` then the
   * header `lines` as a byte string (each code unit one byte, as headers
   * are) and `body` (bytes, or an ASCII string: one byte per code unit),
   * straight into the ring: one copy of each.
   */
  putResponse(
    id: number,
    status: number,
    flags: number,
    lines: string,
    body: Uint8Array | string,
  ): void {
    const writer = this.#ring;
    if (this.#stopped || writer.detached) return;
    const length = lines.length;
    if (this.#backlog.length === 0) {
      const offset = writer.reserve(16 + length + body.length, KREPIS_HTTP_TO_KERNEL_RESPONSE);
      if (offset >= 0) {
        const words = this.#words;
        const word = offset >> 2;
        words[word] = id;
        words[word + 1] = status;
        words[word + 2] = flags;
        words[word + 3] = length;
        const data = writer.data;
        const start = offset + 16;
        writeByteString(data, start, lines);
        if (typeof body === "string") writeByteString(data, start + length, body);
        else if (body.length > 0) data.set(body, start + length);
        this.#scheduleFlush();
        return;
      }
    }
    const payload = new Uint8Array(length + body.length);
    writeByteString(payload, 0, lines);
    if (typeof body === "string") writeByteString(payload, length, body);
    else payload.set(body, length);
    this.#queue({
      tag: KREPIS_HTTP_TO_KERNEL_RESPONSE,
      id,
      word1: status,
      word2: flags,
      word3: length,
      headWords: 4,
      payload,
    });
  }

  /** Keeps the order: everything after a waiting record waits too. */
  #queue(record: Pending): void {
    this.#backlog.push(record);
    if (!this.#backlogDraining) void this.#drainBacklog();
  }

  #tryPut(
    tag: number,
    id: number,
    word1: number,
    word2: number,
    word3: number,
    headWords: number,
    payload: Uint8Array,
  ): boolean {
    const writer = this.#ring;
    const head = headWords * 4;
    const offset = writer.reserve(head + payload.length, tag);
    if (offset < 0) return false;
    const words = this.#words;
    const word = offset >> 2;
    words[word] = id;
    words[word + 1] = word1;
    if (headWords >= 3) words[word + 2] = word2;
    if (headWords === 4) words[word + 3] = word3;
    if (payload.length > 0) writer.data.set(payload, offset + head);
    return true;
  }

  async #drainBacklog(): Promise<void> {
    this.#backlogDraining = true;
    const backlog = this.#backlog;
    try {
      while (backlog.length > 0 && !this.#stopped) {
        const next = backlog[0];
        if (
          this.#tryPut(
            next.tag,
            next.id,
            next.word1,
            next.word2,
            next.word3,
            next.headWords,
            next.payload,
          )
        ) {
          backlog.shift();
          continue;
        }
        const need = recordSize(next.headWords * 4 + next.payload.length);
        if (!(await this.#ring.waitForSpace(need))) break;
      }
      if (!this.#ring.detached) this.#ring.flush();
    } catch {
      // The ring closed under us: the server is stopping.
    } finally {
      this.#backlogDraining = false;
      if (this.#stopped) backlog.length = 0;
    }
  }

  /** Publishes the records of this microtask wave with one store. */
  #scheduleFlush(): void {
    if (this.#flushQueued) return;
    this.#flushQueued = true;
    queueMicrotask(this.#flushTask);
  }

  /** The server stopped: drop what waits and every later record. */
  stop(): void {
    this.#stopped = true;
    this.#backlog.length = 0;
  }
}
