/**
 * The Worker anchor of `bench/runtimes.ts`: posts every message back.
 *
 * @module
 */

/// <reference lib="deno.worker" />
self.onmessage = (event: MessageEvent) => self.postMessage(event.data);
