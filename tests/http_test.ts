// The HTTP engine: a real kernel serving on loopback, real clients (Deno
// fetch, curl, raw TCP for malformed or oversized requests), real upstreams
// (Deno.serve, python3 -m http.server) started by the tests. No internet.
import assert from "node:assert/strict";
import {
  ClosedError,
  type HttpServeOptions,
  type HttpServer,
  InvalidArgumentError,
  Kernel,
} from "../mod.ts";
import { fixture, libraryPath, tempDir } from "./_helpers.ts";

const HOST = "127.0.0.1";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

async function openKernel(): Promise<Kernel> {
  return await Kernel.open({ dataDir: null, libraryPath: libraryPath() });
}

/** A kernel with one server on a free loopback port. */
async function serve(options: HttpServeOptions): Promise<
  { kernel: Kernel; server: HttpServer; base: string } & AsyncDisposable
> {
  const kernel = await openKernel();
  let server: HttpServer;
  try {
    server = kernel.http.serve({ hostname: HOST, port: 0, ...options });
  } catch (error) {
    await kernel.close();
    throw error;
  }
  return {
    kernel,
    server,
    base: `http://${HOST}:${server.addr.port}`,
    async [Symbol.asyncDispose]() {
      await server.shutdown({ graceMs: 0 });
      await kernel.close();
    },
  };
}

/** A `Deno.serve` upstream on a free (or the given) port. */
function upstream(
  handler: (request: Request) => Response | Promise<Response>,
  port = 0,
): Deno.HttpServer<Deno.NetAddr> & { port: number } {
  const server = Deno.serve({ hostname: HOST, port, onListen: () => {} }, handler);
  return Object.assign(server, { port: server.addr.port });
}

/** A port nothing listens on (bound and released). */
function freePort(): number {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    try {
      const connection = await Deno.connect({ hostname: HOST, port });
      connection.close();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await delay(50);
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function text(url: string, init?: RequestInit): Promise<[number, string, Headers]> {
  const response = await fetch(url, init);
  return [response.status, await response.text(), response.headers];
}

async function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command("curl", {
    args: ["--silent", "--show-error", "--max-time", "20", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/**
 * A minimal HTTP/2 client (prior knowledge, no TLS): sends each wave of GETs
 * as concurrent streams on ONE connection, waits for the wave's responses,
 * then sends the next wave. Returns the response bodies in request order.
 */
async function h2Requests(port: number, waves: string[][]): Promise<string[]> {
  const connection = await Deno.connect({ hostname: HOST, port });
  const frame = (type: number, flags: number, stream: number, payload: Uint8Array) => {
    const bytes = new Uint8Array(9 + payload.length);
    bytes.set([payload.length >> 16, (payload.length >> 8) & 255, payload.length & 255]);
    bytes[3] = type;
    bytes[4] = flags;
    new DataView(bytes.buffer).setUint32(5, stream);
    bytes.set(payload, 9);
    return bytes;
  };
  // HPACK: literal header fields without indexing, no Huffman.
  const literal = (name: string, value: string) => [
    0,
    name.length,
    ...encoder.encode(name),
    value.length,
    ...encoder.encode(value),
  ];
  const bodies = new Map<number, string>();
  const ended = new Set<number>();
  let buffer = new Uint8Array(0);
  let stream = 1;
  try {
    await connection.write(encoder.encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    await connection.write(frame(4, 0, 0, new Uint8Array(0)));
    const order: number[] = [];
    for (const wave of waves) {
      const ids: number[] = [];
      for (const path of wave) {
        const block = new Uint8Array([
          ...literal(":method", "GET"),
          ...literal(":scheme", "http"),
          ...literal(":path", path),
          ...literal(":authority", `${HOST}:${port}`),
        ]);
        await connection.write(frame(1, 0x5, stream, block)); // END_STREAM | END_HEADERS
        ids.push(stream);
        order.push(stream);
        bodies.set(stream, "");
        stream += 2;
      }
      while (!ids.every((id) => ended.has(id))) {
        const chunk = new Uint8Array(65536);
        const n = await connection.read(chunk);
        if (n === null) throw new Error("the server closed the HTTP/2 connection");
        const joined = new Uint8Array(buffer.length + n);
        joined.set(buffer);
        joined.set(chunk.subarray(0, n), buffer.length);
        buffer = joined;
        while (buffer.length >= 9) {
          const length = (buffer[0] << 16) | (buffer[1] << 8) | buffer[2];
          if (buffer.length < 9 + length) break;
          const [type, flags] = [buffer[3], buffer[4]];
          const id = new DataView(buffer.buffer, buffer.byteOffset).getUint32(5) & 0x7fffffff;
          const payload = buffer.subarray(9, 9 + length);
          if (type === 4 && (flags & 1) === 0) {
            await connection.write(frame(4, 1, 0, new Uint8Array(0)));
          }
          if (type === 0) bodies.set(id, bodies.get(id)! + decoder.decode(payload));
          if (type === 7 || type === 3) throw new Error(`GOAWAY/RST_STREAM on stream ${id}`);
          if ((type === 0 || type === 1) && (flags & 1) !== 0) ended.add(id);
          buffer = buffer.slice(9 + length);
        }
      }
    }
    return order.map((id) => bodies.get(id)!);
  } finally {
    connection.close();
  }
}

/** Sends raw bytes on a fresh connection and reads until the server closes or `until` matches. */
async function raw(
  port: number,
  request: Uint8Array | string,
  until: RegExp = /\r\n\r\n/,
): Promise<string> {
  const connection = await Deno.connect({ hostname: HOST, port });
  try {
    const bytes = typeof request === "string" ? encoder.encode(request) : request;
    // The server may answer (and close) before taking everything.
    await connection.write(bytes).catch(() => {});
    let received = "";
    const buffer = new Uint8Array(64 * 1024);
    while (!until.test(received)) {
      const count = await connection.read(buffer).catch(() => null);
      if (count === null) break;
      received += decoder.decode(buffer.subarray(0, count));
    }
    return received;
  } finally {
    connection.close();
  }
}

function statusOf(response: string): number {
  return Number(/^HTTP\/1\.[01] (\d{3})/.exec(response)?.[1] ?? 0);
}

// ---------------------------------------------------------------------------

Deno.test("http: static routes, JS handler, 404 without handler, port 0", async () => {
  await using s = await serve({
    routes: [
      {
        match: { path: "/health" },
        respond: { status: 200, headers: { "content-type": "text/plain" }, body: "ok" },
      },
      { match: { pathPrefix: "/teapot/", methods: ["get"] }, respond: { status: 418 } },
      { match: { host: "other.local" }, respond: { body: new Uint8Array([104, 105]) } },
    ],
    handler: (request) => new Response(`js ${request.method} ${new URL(request.url).pathname}`),
  });
  assert.notEqual(s.server.addr.port, 0);
  assert.equal(s.server.addr.hostname, HOST);
  const [status, body, headers] = await text(`${s.base}/health`);
  assert.equal(status, 200);
  assert.equal(body, "ok");
  assert.equal(headers.get("content-type"), "text/plain");
  assert.deepEqual((await text(`${s.base}/teapot/x`)).slice(0, 2), [418, ""]);
  // The method does not match: the handler answers.
  assert.deepEqual((await text(`${s.base}/teapot/x`, { method: "POST", body: "" })).slice(0, 2), [
    200,
    "js POST /teapot/x",
  ]);
  assert.deepEqual((await text(`${s.base}/health/more`)).slice(0, 2), [200, "js GET /health/more"]);
  const other = await curl(["-H", "Host: OTHER.local:1234", `${s.base}/anything`]);
  assert.equal(other.stdout, "hi");
  const stats = s.server.stats();
  assert.equal(stats.requestsNative, 3);
  assert.equal(stats.requestsJs, 2);

  await using bare = await serve({ routes: [{ match: { path: "/" }, respond: { body: "root" } }] });
  assert.deepEqual((await text(`${bare.base}/`)).slice(0, 2), [200, "root"]);
  assert.equal((await text(`${bare.base}/nothing`))[0], 404);
});

Deno.test("http: the handler gets the request, its context and the client's address", async () => {
  let seen: { info: unknown; headers: [string, string][]; url: string; method: string } | null =
    null;
  await using s = await serve({
    tenantHeader: "X-Org",
    handler: (request, info) => {
      seen = { info, headers: [...request.headers], url: request.url, method: request.method };
      return Response.json(info);
    },
  });
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const response = await fetch(`${s.base}/a/b?c=d&e`, {
    method: "PUT",
    body: "x",
    headers: {
      "x-request-id": "req-42",
      "x-org": "acme",
      "traceparent": `00-${traceId}-00f067aa0ba902b7-01`,
      "x-custom": "one, two",
    },
  });
  const info = await response.json();
  assert.equal(info.context.requestId, "req-42");
  assert.equal(info.context.tenantId, "acme");
  assert.equal(info.context.traceId, traceId);
  assert.equal(info.context.priority, 128);
  assert.equal(info.httpVersion, "1.1");
  assert.equal(info.remoteAddr.hostname, HOST);
  assert.ok(info.remoteAddr.port > 0);
  assert.ok(seen !== null);
  const { url, method, headers } = seen as {
    url: string;
    method: string;
    headers: [string, string][];
  };
  assert.equal(url, `${s.base}/a/b?c=d&e`);
  assert.equal(method, "PUT");
  assert.ok(headers.some(([name, value]) => name === "x-custom" && value === "one, two"));
  // Without the headers: a kernel-generated request id, no tenant, no trace.
  const plain = await (await fetch(`${s.base}/`)).json();
  assert.ok(plain.context.requestId.length > 0);
  assert.notEqual(plain.context.requestId, info.context.requestId);
  assert.equal(plain.context.tenantId, null);
  assert.equal(plain.context.traceId, null);
});

Deno.test("http: proxy to a Deno.serve upstream and to python3 -m http.server", async () => {
  await using deno = upstream((request) => {
    const url = new URL(request.url);
    return new Response(`upstream ${request.method} ${url.pathname}${url.search}`, {
      headers: { "x-upstream": "deno" },
    });
  });
  using dir = tempDir();
  Deno.writeTextFileSync(`${dir.path}/hello.txt`, "from python\n");
  const pythonPort = freePort();
  const python = new Deno.Command("python3", {
    args: ["-m", "http.server", String(pythonPort), "--bind", HOST, "--directory", dir.path],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    await waitForPort(pythonPort);
    await using s = await serve({
      routes: [
        { match: { pathPrefix: "/py/" }, proxy: { upstreams: [`${HOST}:${pythonPort}`] } },
        { match: { pathPrefix: "/api/" }, proxy: { upstreams: [`${HOST}:${deno.port}`] } },
      ],
    });
    const [status, body, headers] = await text(`${s.base}/api/items?x=1`);
    assert.equal(status, 200);
    assert.equal(body, "upstream GET /api/items?x=1");
    assert.equal(headers.get("x-upstream"), "deno");
    const posted = await text(`${s.base}/api/form`, { method: "POST", body: "a=1" });
    assert.deepEqual(posted.slice(0, 2), [200, "upstream POST /api/form"]);
    const [pyStatus, pyBody] = await text(`${s.base}/py/hello.txt`);
    // python serves the directory: /py/hello.txt does not exist there, the
    // proxy forwards the path unchanged.
    assert.equal(pyStatus, 404);
    assert.ok(pyBody.length > 0);
    await using direct = await serve({
      routes: [{ proxy: { upstreams: [`${HOST}:${pythonPort}`] } }],
    });
    assert.deepEqual((await text(`${direct.base}/hello.txt`)).slice(0, 2), [200, "from python\n"]);
    assert.equal(s.server.stats().requestsProxied, 3);
  } finally {
    python.kill("SIGTERM");
    await python.status;
  }
});

/**
 * A scripted HTTP/1.1 upstream on raw TCP: answers each request head with
 * `respond(path)`'s bytes (written in pieces, so responses arrive in parts),
 * keeps connections alive, and counts the connections it accepted.
 */
function scriptedUpstream(
  respond: (path: string) => string[],
): { port: number; connections: () => number } & AsyncDisposable {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  let connections = 0;
  const open = new Set<Deno.Conn>();
  (async () => {
    for await (const connection of listener) {
      connections++;
      open.add(connection);
      (async () => {
        let pending = "";
        const buffer = new Uint8Array(16 * 1024);
        try {
          while (true) {
            const n = await connection.read(buffer);
            if (n === null) break;
            pending += decoder.decode(buffer.subarray(0, n));
            let end: number;
            while ((end = pending.indexOf("\r\n\r\n")) >= 0) {
              const path = pending.slice(0, end).split(" ")[1];
              pending = pending.slice(end + 4);
              for (const piece of respond(path)) {
                if (piece === "<close>") {
                  connection.close();
                  return;
                }
                await connection.write(encoder.encode(piece));
                await new Promise((resolve) => setTimeout(resolve, 5));
              }
            }
          }
        } catch { /* the client went away */ }
        open.delete(connection);
        try {
          connection.close();
        } catch { /* closed */ }
      })();
    }
  })().catch(() => {});
  return {
    port: listener.addr.port,
    connections: () => connections,
    [Symbol.asyncDispose](): Promise<void> {
      listener.close();
      for (const connection of open) {
        try {
          connection.close();
        } catch { /* closed */ }
      }
      return Promise.resolve();
    },
  };
}

Deno.test("http: proxying relays every response framing and reuses upstream connections", async () => {
  await using up = scriptedUpstream((path) => {
    switch (path) {
      case "/length":
        return ["HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\n\r\nhello", " world"];
      case "/chunked":
        return [
          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
          "lo\r\n6\r\n world\r\n",
          "0\r\n\r\n",
        ];
      case "/empty":
        return ["HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"];
      case "/until-close":
        return ["HTTP/1.0 200 OK\r\n\r\nall of it", " until close", "<close>"];
      case "/cut":
        return ["HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "<close>"];
      case "/extra": // a late extra response on an idle kept-alive connection
        return [
          "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
          "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTALE!",
        ];
      case "/early": // 103 and the final response in one write
        return [
          "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ];
      case "/broken":
        return ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX"];
      case "/cl-te":
        return [
          "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ];
      default:
        return ["HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"];
    }
  });
  await using s = await serve({
    routes: [{ proxy: { upstreams: [`${HOST}:${up.port}`] } }],
  });
  for (let round = 0; round < 3; round++) {
    assert.deepEqual((await text(`${s.base}/length`)).slice(0, 2), [200, "hello world"]);
    assert.deepEqual((await text(`${s.base}/chunked`)).slice(0, 2), [200, "hello world"]);
    const empty = await fetch(`${s.base}/empty`);
    assert.equal(empty.status, 204);
    await empty.body?.cancel();
  }
  // Nine sequential requests over one kept-alive upstream connection.
  assert.equal(up.connections(), 1);
  const head = await fetch(`${s.base}/length`, { method: "HEAD" });
  assert.equal(head.headers.get("content-length"), "11");
  assert.equal(await head.text(), "");
  // A body delimited by the upstream closing: relayed whole, the client
  // connection closes after it.
  const untilClose = await raw(
    s.server.addr.port,
    `GET /until-close HTTP/1.1\r\nHost: a\r\n\r\n`,
    /(?!)/,
  );
  assert.match(untilClose, /^HTTP\/1\.1 200 OK\r\n/);
  assert.match(untilClose, /connection: close\r\n/i);
  assert.ok(untilClose.endsWith("all of it until close"), untilClose);
  // An upstream that dies mid-body: the client sees a truncated response
  // (its connection closes), never a complete-looking one.
  const cut = await raw(s.server.addr.port, `GET /cut HTTP/1.1\r\nHost: a\r\n\r\n`, /(?!)/);
  assert.match(cut, /content-length: 100/i);
  assert.ok(cut.endsWith("partial"), cut);
  await assert.rejects(async () => await (await fetch(`${s.base}/cut`)).text());
  // A kept-alive upstream connection that received bytes while idle is
  // never reused: the next client gets its own response, not the stale one.
  assert.deepEqual((await text(`${s.base}/extra`)).slice(0, 2), [200, "hi"]);
  await new Promise((resolve) => setTimeout(resolve, 50));
  for (let i = 0; i < 3; i++) {
    assert.deepEqual((await text(`${s.base}/length`)).slice(0, 2), [200, "hello world"]);
  }
  // An informational response and the final one in the same read.
  const early = await raw(
    s.server.addr.port,
    "GET /early HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    /(?!)/,
  );
  assert.match(early, /^HTTP\/1\.1 103 Early Hints\r\n/);
  assert.ok(early.endsWith("\r\n\r\nok"), early);
  // Broken chunked framing from the upstream: the client connection closes
  // (a pipelined request behind it is not answered on it).
  const broken = await raw(
    s.server.addr.port,
    "GET /broken HTTP/1.1\r\nHost: a\r\n\r\nGET /length HTTP/1.1\r\nHost: a\r\n\r\n",
    /(?!)/,
  );
  assert.ok(!broken.includes("hello world"), broken);
  // A content-length next to chunked framing is not passed on.
  const clte = await raw(
    s.server.addr.port,
    "GET /cl-te HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    /(?!)/,
  );
  assert.doesNotMatch(clte, /content-length/i);
  assert.match(clte, /transfer-encoding: chunked/i);
  // And the server still proxies.
  assert.deepEqual((await text(`${s.base}/chunked`)).slice(0, 2), [200, "hello world"]);
  // The count drops when the kernel's side of the exchange ends, a moment
  // after the client has read the last byte.
  for (let waited = 0; waited < 1000 && s.server.stats().upstreams[0].inFlight > 0; waited += 10) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.equal(s.server.stats().upstreams[0].inFlight, 0);
});

Deno.test("http: upstream down → 502, and recovery when it comes back", async () => {
  const port = freePort();
  await using s = await serve({
    routes: [{ proxy: { upstreams: [`${HOST}:${port}`], timeoutMs: 2000 } }],
  });
  assert.equal((await text(`${s.base}/`))[0], 502);
  assert.equal((await text(`${s.base}/`))[0], 502);
  await using up = upstream(() => new Response("back"), port);
  let last: [number, string, Headers] = [0, "", new Headers()];
  for (let attempt = 0; attempt < 50; attempt++) {
    last = await text(`${s.base}/`);
    if (last[0] === 200) break;
    await delay(100);
  }
  assert.deepEqual(last.slice(0, 2), [200, "back"]);
  assert.equal(up.port, port);
});

Deno.test("http: streaming request body reaches the handler chunk by chunk", async () => {
  const gate = Promise.withResolvers<void>();
  const firstSeen = Promise.withResolvers<string>();
  await using s = await serve({
    handler: async (request) => {
      const reader = request.body!.getReader();
      const first = await reader.read();
      firstSeen.resolve(decoder.decode(first.value));
      let rest = "";
      while (true) {
        const { done, value } = await reader.read();
        if (done) break;
        rest += decoder.decode(value);
      }
      return new Response(`first=${decoder.decode(first.value)} rest=${rest}`);
    },
  });
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(encoder.encode("one"));
      await gate.promise; // the second chunk only after the handler saw the first
      controller.enqueue(encoder.encode("two"));
      controller.enqueue(encoder.encode("three"));
      controller.close();
    },
  });
  const responding = fetch(
    `${s.base}/upload`,
    { method: "POST", body, duplex: "half" } as
      & RequestInit
      & { duplex: "half" },
  );
  assert.equal(await firstSeen.promise, "one");
  gate.resolve();
  const response = await responding;
  assert.equal(await response.text(), "first=one rest=twothree");
});

Deno.test("http: streaming response body: chunks arrive before the end", async () => {
  const gate = Promise.withResolvers<void>();
  await using s = await serve({
    handler: () =>
      new Response(
        new ReadableStream<Uint8Array>({
          async start(controller) {
            controller.enqueue(encoder.encode("head;"));
            await gate.promise;
            controller.enqueue(encoder.encode("tail"));
            controller.close();
          },
        }),
      ),
  });
  const response = await fetch(`${s.base}/stream`);
  const reader = response.body!.getReader();
  const first = await reader.read();
  assert.equal(decoder.decode(first.value), "head;");
  gate.resolve();
  let rest = "";
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    rest += decoder.decode(value);
  }
  assert.equal(rest, "tail");
});

Deno.test("http: large bodies both ways go through the credit windows intact", async () => {
  await using s = await serve({
    // Echo: the request body streams straight back as the response body.
    handler: (request) => new Response(request.body),
  });
  const size = 3 * 1024 * 1024 + 17;
  const payload = new Uint8Array(size);
  for (let index = 0; index < size; index++) payload[index] = (index * 7 + (index >> 10)) & 0xff;
  const response = await fetch(`${s.base}/echo`, { method: "POST", body: payload });
  const echoed = new Uint8Array(await response.arrayBuffer());
  assert.equal(echoed.length, size);
  assert.ok(echoed.every((byte, index) => byte === payload[index]));

  // A large static body from the handler (split to fit the window).
  await using big = await serve({ handler: () => new Response(payload) });
  const fetched = await fetch(`${big.base}/`);
  assert.equal(fetched.headers.get("content-length"), String(size));
  const bytes = new Uint8Array(await fetched.arrayBuffer());
  assert.equal(bytes.length, size);
  assert.ok(bytes.every((byte, index) => byte === payload[index]));
});

Deno.test("http: many concurrent JS requests, sync and async handlers", async () => {
  let count = 0;
  await using s = await serve({
    handler: async (request) => {
      const n = ++count;
      if (n % 2 === 0) await delay(1);
      return new Response(new URL(request.url).searchParams.get("i"));
    },
  });
  const results = await Promise.all(
    Array.from({ length: 200 }, (_, i) => text(`${s.base}/?i=${i}`)),
  );
  results.forEach(([status, body], index) => {
    assert.equal(status, 200);
    assert.equal(body, String(index));
  });
  assert.equal(s.server.stats().jsInFlight, 0);
});

Deno.test("http: a throwing or rejecting handler → 500, and the server keeps serving", async () => {
  await using s = await serve({
    handler: async (request) => {
      const path = new URL(request.url).pathname;
      if (path === "/throw") throw new Error("boom");
      if (path === "/reject") return await Promise.reject(new Error("async boom"));
      if (path === "/not-a-response") return "nope" as unknown as Response;
      if (path === "/bad-stream") {
        return new Response(
          new ReadableStream({
            pull() {
              throw new Error("stream boom");
            },
          }),
        );
      }
      return new Response("fine");
    },
  });
  for (const path of ["/throw", "/reject", "/not-a-response", "/bad-stream"]) {
    const [status, body] = await text(`${s.base}${path}`);
    assert.equal(status, 500, path);
    assert.equal(body, "Internal Server Error");
    assert.deepEqual((await text(`${s.base}/ok`)).slice(0, 2), [200, "fine"]);
  }
  // A sync throw too.
  await using sync = await serve({
    handler: () => {
      throw new Error("sync boom");
    },
    onError: (error) => new Response(`handled: ${(error as Error).message}`, { status: 503 }),
  });
  assert.deepEqual((await text(`${sync.base}/`)).slice(0, 2), [503, "handled: sync boom"]);
});

Deno.test("http: a response stream that fails after the head aborts that response only", async () => {
  await using s = await serve({
    handler: (request) => {
      if (new URL(request.url).pathname !== "/fail") return new Response("ok");
      let sent = false;
      return new Response(
        new ReadableStream({
          async pull(controller) {
            if (!sent) {
              sent = true;
              controller.enqueue(encoder.encode("partial"));
              return;
            }
            await delay(50);
            controller.error(new Error("mid-stream failure"));
          },
        }),
      );
    },
  });
  const response = await fetch(`${s.base}/fail`);
  assert.equal(response.status, 200);
  await assert.rejects(response.text());
  assert.deepEqual((await text(`${s.base}/`)).slice(0, 2), [200, "ok"]);
});

Deno.test("http: oversized headers → 431, oversized bodies → 413 (content-length and chunked)", async () => {
  let reached = 0;
  await using s = await serve({
    limits: { maxHeaderBytes: 1024, maxBodyBytes: 1000 },
    handler: async (request) => {
      reached++;
      return new Response(`got ${(await request.arrayBuffer()).byteLength}`);
    },
  });
  const port = s.server.addr.port;
  const big = "x".repeat(2000);
  assert.equal(
    statusOf(await raw(port, `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${big}\r\n\r\n`)),
    431,
  );
  // Content-length over the limit: refused before the body is read.
  assert.equal(
    statusOf(
      await raw(
        port,
        `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n${"y".repeat(5000)}`,
      ),
    ),
    413,
  );
  // Chunked: counted while it streams.
  const chunk = "z".repeat(600);
  const chunked = `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n` +
    `258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`;
  assert.equal(statusOf(await raw(port, chunked)), 413);
  // At the limit: accepted.
  const ok = await raw(
    port,
    `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n${
      "y".repeat(1000)
    }`,
    /got 1000/,
  );
  assert.equal(statusOf(ok), 200);
  assert.match(ok, /got 1000/);
  assert.ok(s.server.stats().refused >= 3);
  assert.ok(reached >= 1);
  // And fetch with a large body sees the 413 too.
  const response = await fetch(`${s.base}/`, { method: "POST", body: "w".repeat(4000) }).catch(
    (error) => error as Error,
  );
  if (response instanceof Response) {
    assert.equal(response.status, 413);
    await response.body?.cancel();
  }
});

Deno.test("http: slow clients: a trickled or missing request head is cut off at headerTimeoutMs", async () => {
  await using s = await serve({
    limits: { headerTimeoutMs: 300 },
    routes: [{ match: { path: "/static" }, respond: { body: "static" } }],
    handler: () => new Response("js"),
  });
  const port = s.server.addr.port;
  /** Milliseconds until the server closes `connection` (reads drain anything it sends). */
  const closedAfter = async (connection: Deno.Conn, started: number): Promise<number> => {
    const buffer = new Uint8Array(1024);
    // Bounded: a server that never closes fails the test instead of hanging it.
    const giveUp = setTimeout(() => connection.close(), 3000);
    while ((await connection.read(buffer).catch(() => null)) !== null) { /* drain */ }
    clearTimeout(giveUp);
    return Date.now() - started;
  };
  // Slowloris: a head that never completes, one byte at a time.
  const slow = await Deno.connect({ hostname: HOST, port });
  let started = Date.now();
  const closed = closedAfter(slow, started);
  for (const byte of encoder.encode("GET /static HTTP/1.1\r\nHost: a\r\nX-Slow: ")) {
    if (Date.now() - started > 1000) break;
    await slow.write(new Uint8Array([byte])).catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const slowMs = await closed;
  try {
    slow.close();
  } catch { /* closed by the bound above */ }
  assert.ok(slowMs >= 250 && slowMs < 2000, `closed after ${slowMs} ms`);
  // A silent connection, and an idle keep-alive connection after a response.
  const silent = await Deno.connect({ hostname: HOST, port });
  started = Date.now();
  const silentMs = await closedAfter(silent, started);
  try {
    silent.close();
  } catch { /* closed by the bound above */ }
  assert.ok(silentMs >= 250 && silentMs < 2000, `silent closed after ${silentMs} ms`);
  for (const path of ["/static", "/js"]) {
    const idle = await Deno.connect({ hostname: HOST, port });
    await idle.write(encoder.encode(`GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`));
    started = Date.now();
    const idleMs = await closedAfter(idle, started);
    try {
      idle.close();
    } catch { /* closed by the bound above */ }
    assert.ok(idleMs >= 250 && idleMs < 2000, `${path}: idle closed after ${idleMs} ms`);
  }
  assert.ok(s.server.stats().refused >= 4);
  // The server still serves.
  assert.equal(await (await fetch(`${s.base}/static`)).text(), "static");
});

Deno.test("http: static routes on HTTP/1.1: HEAD, pipelining, Connection: close, queries", async () => {
  await using s = await serve({
    routes: [
      {
        match: { path: "/static" },
        respond: { status: 201, headers: { "x-kind": "static" }, body: "static!" },
      },
    ],
    handler: (request) => new Response(`js ${request.method} ${new URL(request.url).search}`),
  });
  const port = s.server.addr.port;
  const head = await raw(
    port,
    "HEAD /static HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    /(?!)/,
  );
  assert.match(head, /^HTTP\/1\.1 201 Created\r\n/);
  assert.match(head, /content-length: 7\r\n/i);
  assert.match(head, /connection: close\r\n/i);
  assert.ok(head.endsWith("\r\n\r\n"), "HEAD: no body");
  // Three pipelined requests in one write, static and JS mixed, answered in order.
  const pipelined = await raw(
    port,
    "GET /static?x=1 HTTP/1.1\r\nHost: a\r\n\r\n" +
      "GET /static HTTP/1.1\r\nHost: a\r\n\r\n" +
      "GET /other?q=2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    /(?!)/,
  );
  assert.equal(pipelined.split("static!").length - 1, 2, pipelined);
  assert.ok(pipelined.endsWith("js GET ?q=2"), pipelined);
  // A request with a body is never taken by the fast path: the route answers, the body is skipped.
  const withBody = await raw(
    port,
    "GET /static HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    /(?!)/,
  );
  assert.equal(statusOf(withBody), 201);
  // Two Host headers: 400 (RFC 9112 §3.2), whichever route the last one names.
  assert.equal(
    statusOf(
      await raw(
        port,
        "GET /static HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        /(?!)/,
      ),
    ),
    400,
  );
  // A Host that is not an authority cannot move the path the handler sees.
  const hostPath = await raw(
    port,
    "GET /other HTTP/1.1\r\nHost: a/static?\r\nConnection: close\r\n\r\n",
    /(?!)/,
  );
  assert.equal(statusOf(hostPath), 400, hostPath);
  // Garbage is a 400 from Pingora, and the server keeps serving.
  assert.equal(statusOf(await raw(port, "NOT HTTP AT ALL\r\n\r\n", /(?!)/)), 400);
  assert.equal(await (await fetch(`${s.base}/static`)).text(), "static!");
});

Deno.test("http: review regressions: early answers, HEAD over h2, silent connections, slow readers", async () => {
  await using s = await serve({
    limits: { bodyTimeoutMs: 500 },
    routes: [
      { match: { path: "/static" }, respond: { body: "static" } },
      { match: { path: "/big" }, respond: { body: new Uint8Array(16 << 20) } },
    ],
    handler: async (request) => {
      if (new URL(request.url).pathname === "/count") {
        return new Response(`got ${(await request.arrayBuffer()).byteLength}`);
      }
      return new Response("early"); // without reading the body
    },
  });
  const port = s.server.addr.port;
  // A handler that answers before the body is complete is heard at once.
  const early = await Deno.connect({ hostname: HOST, port });
  await early.write(
    encoder.encode("POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789"),
  );
  const buffer = new Uint8Array(4096);
  const started = Date.now();
  const n = await early.read(buffer);
  assert.ok(n !== null && decoder.decode(buffer.subarray(0, n)).includes("early"));
  assert.ok(Date.now() - started < 400, `answered after ${Date.now() - started} ms`);
  early.close();
  // Expect: 100-continue is answered, so the client sends its body at once.
  const expect = await curl([
    "-H",
    "Expect: 100-continue",
    "--expect100-timeout",
    "10",
    "--data-binary",
    "x".repeat(2048),
    "-w",
    " %{time_total}",
    `${s.base}/count`,
  ]);
  const [text, seconds] = expect.stdout.split(" ").slice(-3).join(" ").split(/ (?=[\d.]+$)/);
  assert.match(text, /got 2048$/);
  assert.ok(Number(seconds) < 2, `took ${seconds} s`);
  // HEAD over HTTP/2 to a static route: the head, no body, no reset.
  const head = await curl(["--http2-prior-knowledge", "-I", `${s.base}/static`]);
  assert.equal(head.code, 0, head.stderr);
  assert.match(head.stdout, /^HTTP\/2 200/);
  // A client that stops reading a large static body is cut off (bodyTimeoutMs).
  const slowReader = await Deno.connect({ hostname: HOST, port });
  await slowReader.write(encoder.encode("GET /big HTTP/1.1\r\nHost: a\r\n\r\n"));
  let connections = 2;
  for (let waited = 0; waited < 5000 && connections > 0; waited += 100) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    connections = s.server.stats().connections;
  }
  assert.equal(connections, 0, "the stalled reader's connection was closed");
  slowReader.close();
  // A partial HTTP/2 preface, then silence: no spinning, and closing it ends it.
  const partial = await Deno.connect({ hostname: HOST, port });
  await partial.write(encoder.encode("PRI * HT"));
  partial.close();
  for (let waited = 0; waited < 2000 && s.server.stats().connections > 0; waited += 50) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(s.server.stats().connections, 0);
  // Connections that never sent a request do not hold up a shutdown.
  const silent = await Deno.connect({ hostname: HOST, port });
  const halfHead = await Deno.connect({ hostname: HOST, port });
  await halfHead.write(encoder.encode("GET /static HTTP/1.1\r\nHost:"));
  await new Promise((resolve) => setTimeout(resolve, 50));
  const stopping = Date.now();
  await s.server.shutdown({ graceMs: 5000 });
  assert.ok(Date.now() - stopping < 1000, `shutdown took ${Date.now() - stopping} ms`);
  silent.close();
  halfHead.close();
});

const BIG_TEXT = "ab".repeat(100_000) + "end";

Deno.test("http: JS response bodies of every kind arrive intact with their lengths", async () => {
  await using s = await serve({
    handler: (request) => {
      switch (new URL(request.url).pathname) {
        case "/text":
          return new Response("héllo ✓", { status: 201, headers: { "x-kind": "text" } });
        case "/json":
          return Response.json({ ok: true, n: 1 });
        case "/empty":
          return new Response("");
        case "/bigtext":
          // A string body larger than the 64 KiB credit window.
          return new Response(BIG_TEXT);
        case "/bytes":
          return new Response(new Uint8Array([0, 1, 2, 255]));
        case "/blob":
          return new Response(new Blob(["blob body"]));
        default:
          return new Response(null, { status: 204 });
      }
    },
  });
  const text = await fetch(`${s.base}/text`);
  assert.equal(text.status, 201);
  assert.equal(text.headers.get("content-length"), String(encoder.encode("héllo ✓").length));
  assert.equal(text.headers.get("x-kind"), "text");
  assert.equal(await text.text(), "héllo ✓");
  const json = await fetch(`${s.base}/json`);
  assert.equal(json.headers.get("content-type"), "application/json");
  assert.deepEqual(await json.json(), { ok: true, n: 1 });
  const bigText = await fetch(`${s.base}/bigtext`);
  assert.equal(bigText.headers.get("content-length"), String(BIG_TEXT.length));
  assert.equal(await bigText.text(), BIG_TEXT);
  const empty = await fetch(`${s.base}/empty`);
  assert.equal(empty.headers.get("content-length"), "0");
  assert.equal(await empty.text(), "");
  assert.deepEqual([...await (await fetch(`${s.base}/bytes`)).bytes()], [0, 1, 2, 255]);
  assert.equal(await (await fetch(`${s.base}/blob`)).text(), "blob body");
  const none = await fetch(`${s.base}/none`);
  assert.equal(none.status, 204);
  assert.equal(await none.text(), "");
  // HEAD: the head of the same response, no body.
  const head = await fetch(`${s.base}/text`, { method: "HEAD" });
  assert.equal(head.status, 201);
  assert.equal(await head.text(), "");
});

Deno.test("http: a handler's content-length that lies never desyncs the connection", async () => {
  await using s = await serve({
    handler: (request) => {
      const path = new URL(request.url).pathname;
      if (path === "/long") {
        return new Response("hello world", { headers: { "content-length": "5" } });
      }
      if (path === "/short") return new Response("abc", { headers: { "content-length": "50" } });
      return new Response("next");
    },
  });
  const port = s.server.addr.port;
  // Over-long: exactly the announced bytes, then the connection closes (the
  // rest is never read as a response to the next request).
  const long = await raw(
    port,
    "GET /long HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
    /(?!)/,
  );
  assert.match(long, /content-length: 5\r\n/i);
  assert.ok(long.endsWith("\r\n\r\nhello") || long.includes("\r\n\r\nhelloHTTP/1.1 200"), long);
  assert.ok(!long.includes(" world"), long);
  // Short: the client sees a truncated body on a closed connection.
  const short = await raw(port, "GET /short HTTP/1.1\r\nHost: a\r\n\r\n", /(?!)/);
  assert.match(short, /content-length: 50\r\n/i);
  assert.ok(short.endsWith("abc"), short);
  assert.equal(await (await fetch(`${s.base}/next`)).text(), "next");
});

Deno.test("http: closing the kernel cuts a graceful shutdown short", async () => {
  const kernel = await openKernel();
  const server = kernel.http.serve({
    hostname: HOST,
    port: 0,
    handler: async (request) => {
      await new Promise((resolve) => setTimeout(resolve, 5000));
      return new Response(request.signal.aborted ? "aborted" : "late");
    },
  });
  const pending = fetch(`http://${HOST}:${server.addr.port}/slow`).catch((error) => error);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const shutdown = server.shutdown({ graceMs: 15_000 });
  const started = Date.now();
  await kernel.close();
  assert.ok(Date.now() - started < 1500, `kernel close took ${Date.now() - started} ms`);
  await shutdown;
  const result = await pending;
  if (result instanceof Response) await result.body?.cancel();
});

Deno.test("http: h2c with prior knowledge (curl --http2-prior-knowledge)", async () => {
  await using s = await serve({
    routes: [{ match: { path: "/static" }, respond: { body: "static over h2" } }],
    handler: async (request, info) =>
      new Response(`${info.httpVersion} ${request.method} ${await request.text()}`),
  });
  const js = await curl(["--http2-prior-knowledge", "-d", "payload", `${s.base}/js`]);
  assert.equal(js.code, 0, js.stderr);
  assert.equal(js.stdout, "2 POST payload");
  const native = await curl([
    "--http2-prior-knowledge",
    "-w",
    " %{http_version}",
    `${s.base}/static`,
  ]);
  assert.equal(native.stdout, "static over h2 2");
  // Several streams on one connection, concurrent and then sequential. (Not
  // with curl: 7.88 cannot reuse a prior-knowledge connection, against nginx
  // as well; a minimal HTTP/2 client instead.)
  const before = s.server.stats().connectionsAccepted;
  const bodies = await h2Requests(s.server.addr.port, [["/a", "/b", "/static"], ["/c"]]);
  assert.deepEqual(bodies, ["2 GET ", "2 GET ", "static over h2", "2 GET "]);
  assert.equal(s.server.stats().connectionsAccepted - before, 1, "one connection, four streams");

  await using off = await serve({ h2c: false, handler: () => new Response("h1 only") });
  const refused = await curl(["--http2-prior-knowledge", `${off.base}/`]);
  assert.notEqual(refused.stdout, "h1 only");
});

Deno.test("http: keep-alive connections are reused", async () => {
  await using s = await serve({
    routes: [{ match: { path: "/n" }, respond: { body: "n" } }],
    handler: () => new Response("js"),
  });
  const result = await curl([`${s.base}/n`, `${s.base}/js`, `${s.base}/n`, `${s.base}/js`]);
  assert.equal(result.stdout, "njsnjs");
  const stats = s.server.stats();
  assert.equal(stats.connectionsAccepted, 1);
  assert.equal(stats.requestsNative + stats.requestsJs, 4);
});

Deno.test("http: load balancing: round_robin, least_conn and hash across two upstreams", async () => {
  const release = Promise.withResolvers<void>();
  const make = (name: string) =>
    upstream(async (request) => {
      if (new URL(request.url).pathname.endsWith("/slow")) await release.promise;
      return new Response(name);
    });
  await using a = make("a");
  await using b = make("b");
  // Released first at the end, whatever happens (Deno.serve's shutdown waits for it).
  using _release = { [Symbol.dispose]: () => release.resolve() };
  const upstreams = [`${HOST}:${a.port}`, `${HOST}:${b.port}`];
  await using s = await serve({
    routes: [
      { match: { pathPrefix: "/rr/" }, proxy: { upstreams, loadBalancing: "round_robin" } },
      { match: { pathPrefix: "/hash/" }, proxy: { upstreams, loadBalancing: "hash" } },
      { match: { pathPrefix: "/lc/" }, proxy: { upstreams, loadBalancing: "least_conn" } },
    ],
  });
  const names = async (path: string, count: number) => {
    const seen: string[] = [];
    for (let index = 0; index < count; index++) seen.push((await text(`${s.base}${path}`))[1]);
    return seen;
  };
  const rr = await names("/rr/x", 10);
  assert.equal(rr.filter((name) => name === "a").length, 5, rr.join());
  assert.equal(rr.filter((name) => name === "b").length, 5, rr.join());
  const hashed = await names("/hash/x", 10);
  assert.equal(new Set(hashed).size, 1, hashed.join());
  // One slow request holds an upstream: least_conn sends the rest (of the
  // same route: each route has its own pool) to the other.
  const slow = fetch(`${s.base}/lc/slow`).then((response) => response.text());
  slow.catch(() => {}); // awaited below; a failure must not go unhandled meanwhile
  let held = "";
  for (let attempt = 0; attempt < 100 && held === ""; attempt++) {
    await delay(20);
    const busy = s.server.stats().upstreams.find((upstream) => upstream.inFlight > 0);
    if (busy !== undefined) held = busy.address;
  }
  assert.notEqual(held, "", "the slow request never reached an upstream");
  const other = held === upstreams[0] ? "b" : "a";
  const lc = await names("/lc/x", 6);
  assert.deepEqual(lc, Array(6).fill(other));
  release.resolve();
  assert.equal(await slow, held === upstreams[0] ? "a" : "b");
});

Deno.test("http: a health check marks a dead upstream down; traffic avoids it", async () => {
  await using alive = upstream((request) =>
    new Response(new URL(request.url).pathname === "/health" ? "healthy" : "alive")
  );
  const dead = `${HOST}:${freePort()}`;
  const live = `${HOST}:${alive.port}`;
  await using s = await serve({
    routes: [{
      proxy: {
        upstreams: [dead, live],
        healthCheck: { path: "/health", intervalMs: 100 },
        timeoutMs: 1000,
      },
    }],
  });
  let stats = s.server.stats();
  for (let attempt = 0; attempt < 100; attempt++) {
    stats = s.server.stats();
    const deadStats = stats.upstreams.find((upstream) => upstream.address === dead);
    if (deadStats !== undefined && !deadStats.healthy) break;
    await delay(50);
  }
  const byAddress = Object.fromEntries(stats.upstreams.map((u) => [u.address, u.healthy]));
  assert.deepEqual(byAddress, { [dead]: false, [live]: true });
  for (let index = 0; index < 6; index++) {
    assert.deepEqual((await text(`${s.base}/x`)).slice(0, 2), [200, "alive"]);
  }
});

Deno.test("http: graceful shutdown finishes in-flight requests; past the grace they are aborted", async () => {
  const kernel = await openKernel();
  try {
    const started = Promise.withResolvers<void>();
    const aborted = Promise.withResolvers<unknown>();
    const server = kernel.http.serve({
      hostname: HOST,
      port: 0,
      handler: async (request) => {
        const path = new URL(request.url).pathname;
        if (path === "/quick") {
          started.resolve();
          await delay(300);
          return new Response("finished in grace");
        }
        // Never answers on its own: only the grace period ends it.
        request.signal.addEventListener("abort", () => aborted.resolve(request.signal.reason));
        await new Promise(() => {});
        return new Response("unreachable");
      },
    });
    const base = `http://${HOST}:${server.addr.port}`;
    const quick = text(`${base}/quick`);
    await started.promise;
    const t0 = Date.now();
    const shutdown = server.shutdown({ graceMs: 2000 });
    assert.deepEqual((await quick).slice(0, 2), [200, "finished in grace"]);
    await shutdown;
    assert.ok(Date.now() - t0 < 1900, "shutdown waited for the whole grace with nothing in flight");
    await assert.rejects(fetch(`${base}/quick`));
    assert.throws(() => server.stats(), ClosedError);

    const second = kernel.http.serve({
      hostname: HOST,
      port: 0,
      handler: async (request) => {
        request.signal.addEventListener("abort", () => aborted.resolve(request.signal.reason));
        await new Promise(() => {});
        return new Response("unreachable");
      },
    });
    const hanging = fetch(`http://${HOST}:${second.addr.port}/hang`).then(
      (response) => response.text(),
    ).catch((error) => error);
    await delay(200);
    assert.equal(second.stats().jsInFlight, 1);
    const t1 = Date.now();
    await second.shutdown({ graceMs: 300 });
    const elapsed = Date.now() - t1;
    assert.ok(elapsed >= 250 && elapsed < 5000, `shutdown took ${elapsed} ms`);
    const reason = await aborted.promise;
    assert.ok(reason instanceof ClosedError, String(reason));
    await hanging;
    await second.finished;
  } finally {
    await kernel.close();
  }
});

Deno.test("http: a client that goes away aborts request.signal", async () => {
  const entered = Promise.withResolvers<void>();
  const aborted = Promise.withResolvers<unknown>();
  await using s = await serve({
    handler: async (request) => {
      request.signal.addEventListener("abort", () => aborted.resolve(request.signal.reason));
      entered.resolve();
      await new Promise((resolve) => request.signal.addEventListener("abort", resolve));
      return new Response("too late");
    },
  });
  const connection = await Deno.connect({ hostname: HOST, port: s.server.addr.port });
  await connection.write(encoder.encode("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
  await entered.promise;
  connection.close();
  const reason = await Promise.race([
    aborted.promise,
    delay(5000).then(() => new Error("no abort within 5 s")),
  ]);
  assert.equal((reason as Error).name, "ConnectionError", String(reason));
});

Deno.test("http: the signal option shuts the server down", async () => {
  await using kernel = await openKernel();
  const controller = new AbortController();
  const server = kernel.http.serve({
    hostname: HOST,
    port: 0,
    signal: controller.signal,
    handler: () => new Response("x"),
  });
  assert.equal((await text(`http://${HOST}:${server.addr.port}/`))[1], "x");
  controller.abort();
  await server.finished;
  await assert.rejects(fetch(`http://${HOST}:${server.addr.port}/`));
  // Already aborted: the server stops at once.
  const stopped = kernel.http.serve({ hostname: HOST, port: 0, signal: AbortSignal.abort() });
  await stopped.finished;
});

Deno.test("http: closing the kernel stops its servers", async () => {
  const kernel = await openKernel();
  const server = kernel.http.serve({
    hostname: HOST,
    port: 0,
    handler: () => new Response("alive"),
  });
  const base = `http://${HOST}:${server.addr.port}`;
  assert.equal((await text(base))[1], "alive");
  await kernel.close();
  await server.finished;
  await assert.rejects(fetch(base));
  assert.throws(() => server.stats(), ClosedError);
  await server.shutdown(); // no-op once stopped
  assert.throws(() => kernel.http, ClosedError);
});

Deno.test("http: await using shuts down and waits", async () => {
  await using kernel = await openKernel();
  let port: number;
  {
    await using server = kernel.http.serve({
      hostname: HOST,
      port: 0,
      handler: () => new Response(""),
    });
    port = server.addr.port;
  }
  await assert.rejects(fetch(`http://${HOST}:${port}/`));
});

Deno.test("http: bad options → InvalidArgumentError naming the field", async () => {
  await using kernel = await openKernel();
  const cases: [unknown, string][] = [
    [{ port: -1 }, "port"],
    [{ port: 70000 }, "port"],
    [{ port: 1.5 }, "port"],
    [{ hostname: "" }, "hostname"],
    [{ routes: {} }, "routes"],
    [{ routes: [{ match: {} }] }, "routes[0]"],
    [{ routes: [{ respond: {}, proxy: { upstreams: ["a:1"] } }] }, "routes[0]"],
    [{ routes: [{ match: { path: "x" }, respond: {} }] }, "routes[0].match.path"],
    [{ routes: [{ match: { pathPrefix: 3 }, respond: {} }] }, "routes[0].match.pathPrefix"],
    [{ routes: [{ match: { methods: ["G T"] }, respond: {} }] }, "routes[0].match.methods"],
    [{ routes: [{ respond: { status: 99 } }] }, "routes[0].respond.status"],
    [
      { routes: [{ respond: { headers: { "transfer-encoding": "chunked" } } }] },
      "routes[0].respond.headers",
    ],
    [{ routes: [{ match: { host: "a.local:8080" }, respond: {} }] }, "routes[0].match.host"],
    [{ routes: [{ proxy: { upstreams: ["a:1"], retries: 16 } }] }, "routes[0].proxy.retries"],
    [{ limits: { maxHeaderBytes: 1 << 20 } }, "limits.maxHeaderBytes"],
    [{ routes: [{ respond: { body: 5 } }] }, "routes[0].respond.body"],
    [{ routes: [{ respond: { headers: { "bad name": "x" } } }] }, "routes[0].respond.headers"],
    [{ routes: [{ proxy: { upstreams: [] } }] }, "routes[0].proxy.upstreams"],
    [{ routes: [{ proxy: { upstreams: ["nohostport"] } }] }, "routes[0].proxy.upstreams"],
    [{ routes: [{ proxy: { upstreams: ["h:0"] } }] }, "routes[0].proxy.upstreams"],
    [
      { routes: [{ proxy: { upstreams: ["h:1"], loadBalancing: "random" } }] },
      "routes[0].proxy.loadBalancing",
    ],
    [{ routes: [{ proxy: { upstreams: ["h:1"], retries: -1 } }] }, "routes[0].proxy.retries"],
    [{ routes: [{ proxy: { upstreams: ["h:1"], timeoutMs: 0 } }] }, "routes[0].proxy.timeoutMs"],
    [
      { routes: [{ proxy: { upstreams: ["h:1"], healthCheck: { path: "health" } } }] },
      "routes[0].proxy.healthCheck.path",
    ],
    [{ handler: "nope" }, "handler"],
    [{ onError: 1 }, "onError"],
    [{ limits: { maxHeaderBytes: 0 } }, "limits.maxHeaderBytes"],
    [{ limits: { maxBodyBytes: -5 } }, "limits.maxBodyBytes"],
    [{ limits: { headerTimeoutMs: "1" } }, "limits.headerTimeoutMs"],
    [{ limits: { bodyTimeoutMs: 1.5 } }, "limits.bodyTimeoutMs"],
    [{ tenantHeader: "bad header" }, "tenantHeader"],
    [{ h2c: "yes" }, "h2c"],
    [{ signal: {} }, "signal"],
  ];
  for (const [options, field] of cases) {
    assert.throws(
      () => kernel.http.serve({ hostname: HOST, port: 0, ...(options as object) }),
      (error: unknown) => {
        assert.ok(error instanceof InvalidArgumentError, `${JSON.stringify(options)}: ${error}`);
        assert.equal(error.details.field, field, JSON.stringify(options));
        return true;
      },
    );
  }
  assert.throws(
    () => kernel.http.serve(null as unknown as HttpServeOptions),
    InvalidArgumentError,
  );
  await using s = await serve({});
  await assert.rejects(s.server.shutdown({ graceMs: -1 }), InvalidArgumentError);
  // Nothing was started by the refused calls.
  assert.equal(kernel.stats().buffers.liveRings, 0);
});

Deno.test("http: an address in use is an IoError-like kernel error, and nothing leaks", async () => {
  await using kernel = await openKernel();
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  try {
    assert.throws(
      () => kernel.http.serve({ hostname: HOST, port: listener.addr.port }),
      (error: unknown) => (error as Error).name === "IoError",
    );
    assert.equal(kernel.stats().buffers.liveRings, 0);
  } finally {
    listener.close();
  }
});

Deno.test("http: without --allow-net serving and proxying are refused (PermissionError)", async () => {
  const run = async (flags: string[], args: string[]) => {
    const output = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        "--allow-ffi",
        "--allow-env",
        "--allow-read",
        ...flags,
        fixture("http_no_net.ts"),
        ...args,
      ],
      env: { KREPIS_LIBRARY_PATH: libraryPath() },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = decoder.decode(output.stdout).trim();
    assert.equal(output.code, 0, decoder.decode(output.stderr));
    return stdout.split("\n").map((line) => JSON.parse(line));
  };
  const listen = await run([], ["listen"]);
  assert.deepEqual(listen.map((outcome) => outcome.name), ["PermissionError", "PermissionError"]);
  assert.match(listen[0].message, /--allow-net=127\.0\.0\.1/);
  assert.match(listen[1].message, /--allow-net=127\.0\.0\.1:8123/);
  const port = freePort();
  const proxy = await run([`--allow-net=${HOST}:${port}`], ["proxy", String(port)]);
  assert.deepEqual(proxy.map((outcome) => outcome.name), ["PermissionError"]);
  assert.match(proxy[0].message, /--allow-net=127\.0\.0\.1:9/);
});
