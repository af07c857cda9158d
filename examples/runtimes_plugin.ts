/**
 * The module `examples/runtimes.ts` runs in its runtimes.
 *
 * @module
 */

import { send, serve } from "../bindings/runtimes/child.ts"; // "@krepis/sdk/runtime" from JSR

await serve({
  request({ body, ctx }) {
    const text = new TextDecoder().decode(body);
    if (text === "crash") Deno.exit(1);
    send(`working on ${text}`); // a "message" event in the parent
    return `${text} for ${ctx?.tenantId ?? "nobody"} from pid ${Deno.pid}`;
  },
  http: (request) => new Response(`hello ${new URL(request.url).pathname} from pid ${Deno.pid}`),
});
