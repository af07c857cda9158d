// A real web framework (Hono, from npm, a dev-only dependency) served through
// `kernel.http.serve({ handler })` unchanged: every answer must be the one
// the same app gives under `Deno.serve`, both servers live on loopback.
import assert from "node:assert/strict";
import { Hono } from "hono";
import { Kernel } from "../mod.ts";
import { libraryPath } from "./_helpers.ts";

const HOST = "127.0.0.1";

/** A small but typical app: params, queries, JSON both ways, middleware, errors, streams. */
function app(): Hono {
  const hono = new Hono();
  hono.use("*", async (c, next) => {
    await next();
    c.header("x-middleware", "ran");
  });
  hono.get("/", (c) => c.text("home"));
  hono.get(
    "/users/:id",
    (c) => c.json({ id: c.req.param("id"), sort: c.req.query("sort") ?? null }),
  );
  hono.post("/echo", async (c) => {
    const body = await c.req.json<Record<string, unknown>>();
    return c.json({ received: body, type: c.req.header("content-type") }, 201);
  });
  hono.put("/bytes", async (c) => {
    const bytes = new Uint8Array(await c.req.arrayBuffer());
    return c.body(bytes.reverse(), 200, { "content-type": "application/octet-stream" });
  });
  hono.get("/redirect", (c) => c.redirect("/users/7", 302));
  hono.get("/cookie", (c) => {
    c.header("set-cookie", "session=abc; Path=/; HttpOnly");
    return c.text(c.req.header("cookie") ?? "none");
  });
  hono.get("/stream", (c) => {
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const part of ["one ", "two ", "three"]) {
          controller.enqueue(new TextEncoder().encode(part));
        }
        controller.close();
      },
    });
    return c.body(stream);
  });
  hono.get("/fail", () => {
    throw new Error("handler failed");
  });
  hono.onError((error, c) => c.text(`caught: ${error.message}`, 500));
  hono.notFound((c) => c.text("no such route", 404));
  return hono;
}

interface Answer {
  status: number;
  body: string;
  headers: Record<string, string | null>;
}

const CHECKED_HEADERS = ["content-type", "x-middleware", "location", "set-cookie"];

async function ask(base: string, path: string, init?: RequestInit): Promise<Answer> {
  const response = await fetch(`${base}${path}`, { redirect: "manual", ...init });
  const body = path === "/bytes"
    ? [...new Uint8Array(await response.arrayBuffer())].join(",")
    : await response.text();
  const headers = Object.fromEntries(
    CHECKED_HEADERS.map((name) => [name, response.headers.get(name)]),
  );
  return { status: response.status, body, headers };
}

const REQUESTS: [string, RequestInit | undefined][] = [
  ["/", undefined],
  ["/users/42?sort=desc", undefined],
  ["/echo", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "José", items: [1, 2, 3] }),
  }],
  ["/bytes", { method: "PUT", body: new Uint8Array([1, 2, 3, 250]) }],
  ["/redirect", undefined],
  ["/cookie", { headers: { cookie: "theme=dark" } }],
  ["/stream", undefined],
  ["/fail", undefined],
  ["/missing", undefined],
];

Deno.test("http: a Hono app answers through kernel.http.serve exactly as under Deno.serve", async () => {
  await using kernel = await Kernel.open({ dataDir: null, libraryPath: libraryPath() });
  const ours = kernel.http.serve({ hostname: HOST, port: 0, handler: app().fetch });
  await using theirs = Deno.serve({ hostname: HOST, port: 0, onListen: () => {} }, app().fetch);
  try {
    const oursBase = `http://${HOST}:${ours.addr.port}`;
    const theirsBase = `http://${HOST}:${theirs.addr.port}`;
    for (const [path, init] of REQUESTS) {
      const expected = await ask(theirsBase, path, init);
      const actual = await ask(oursBase, path, init);
      assert.deepEqual(actual, expected, `${init?.method ?? "GET"} ${path}`);
    }
    // The answers are the app's, not empty lookalikes.
    const user = await ask(oursBase, "/users/42?sort=desc");
    assert.equal(user.body, JSON.stringify({ id: "42", sort: "desc" }));
    assert.equal(user.headers["x-middleware"], "ran");
    assert.equal((await ask(oursBase, "/stream")).body, "one two three");
    assert.equal((await ask(oursBase, "/fail")).status, 500);
    // Many at once: the app keeps its per-request state apart.
    const answers = await Promise.all(
      Array.from({ length: 64 }, (_, index) => ask(oursBase, `/users/${index}`)),
    );
    answers.forEach((answer, index) => {
      assert.equal(answer.status, 200);
      assert.equal(answer.body, JSON.stringify({ id: String(index), sort: null }));
    });
  } finally {
    await ours.shutdown({ graceMs: 0 });
  }
});
