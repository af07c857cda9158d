/**
 * The runtime `bench/runtimes.ts` measures: answers every request with its
 * body and every HTTP request with a hello world.
 *
 * @module
 */

import { serve } from "../bindings/runtimes/child.ts";

await serve({
  request: ({ body }) => body,
  http: () => new Response("Hello, World!"),
});
