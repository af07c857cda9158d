import { Kernel } from "../mod.ts";
const kernel = await Kernel.open({ dataDir: null });
const upPort = Number(Deno.env.get("UP_PORT") ?? 0);
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
const log = (...a: unknown[]) => console.log(`[${Date.now() - t0}ms]`, ...a);
const routes: any[] = [
  { match: { path: "/s" }, respond: { body: "static" } },
];
if (upPort) routes.push({ match: { pathPrefix: "/p/" }, proxy: { upstreams: [`127.0.0.1:${upPort}`], loadBalancing: "least_conn", timeoutMs: 20000 } });
const limits = JSON.parse(Deno.env.get("LIMITS") ?? "{}");
let server: any;
server = kernel.http.serve({
  hostname: "127.0.0.1", port: 0, routes, limits,
  handler: async (req, info) => {
    const url = new URL(req.url);
    log("handler", req.method, url.pathname, info.httpVersion);
    switch (url.pathname) {
      case "/hello": return new Response("hello");
      case "/sse": {
        let timer: number | undefined;
        req.signal.addEventListener("abort", () => log("sse signal aborted"));
        return new Response(new ReadableStream({
          start(c) { c.enqueue(new TextEncoder().encode("first\n")); },
          pull(c) { return new Promise((r) => { timer = setTimeout(() => { c.enqueue(new TextEncoder().encode("tick\n")); r(); }, 8000); }); },
          cancel(reason) { clearTimeout(timer); log("sse cancel called", String(reason)); },
        }));
      }
      case "/clsmall": return new Response("0123456789", { headers: { "content-length": "5" } });
      case "/clbig": return new Response("0123456789", { headers: { "content-length": "20" } });
      case "/te": return new Response("hello", { headers: { "transfer-encoding": "chunked" } });
      case "/conn": return new Response("hello", { headers: { "connection": "close", "keep-alive": "timeout=5" } });
      case "/upgrade": return new Response("hello", { headers: { "upgrade": "websocket" } });
      case "/noread": return new Response("noread-ok");
      case "/echo": {
        const body = req.body!;
        return new Response(body.pipeThrough(new TransformStream({ transform(c, ctl) { log("echo chunk", c.length); ctl.enqueue(c); } })));
      }
      case "/slow": { const ms = Number(url.searchParams.get("ms") ?? 2000); req.signal.addEventListener("abort", () => log("slow aborted", String(req.signal.reason))); await delay(ms); return new Response("slow-done"); }
      case "/stream": {
        let i = 0;
        return new Response(new ReadableStream({ async pull(c) { await delay(100); if (i++ >= 50) c.close(); else c.enqueue(new TextEncoder().encode(`chunk${i}\n`)); } }));
      }
      case "/count": { let n = 0; for await (const c of req.body!) n += c.length; return new Response(String(n)); }
      case "/stats": return Response.json(server.stats());
      case "/shutdown": {
        const grace = Number(url.searchParams.get("grace") ?? 1000);
        setTimeout(() => { log("shutdown start"); server.shutdown({ graceMs: grace }).then(() => log("shutdown resolved")); }, 10);
        return new Response("shutting");
      }
      case "/kclose": { setTimeout(async () => { log("kernel close"); await kernel.close(); log("kernel closed"); }, 10); return new Response("closing"); }
    }
    return new Response("default " + url.pathname);
  },
});
server.finished.then(() => log("finished resolved"));
log("PORT", server.addr.port);
await Deno.writeTextFile(Deno.env.get("PORT_FILE") ?? "/tmp/rv/port", String(server.addr.port));
