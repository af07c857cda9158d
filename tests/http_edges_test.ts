// The HTTP engine at its edges, tried as a hostile client would: raw bytes
// over a socket against static, JS and proxy routes (real upstreams: a raw
// TCP echo that shows the exact request line it got, python3 -m http.server),
// each case asserting the exact status and whether the connection stays
// open; the same bytes sent to Deno.serve where it is the reference; h2spec
// against every route kind and Deno.serve in the same run.
import assert from "node:assert/strict";
import { type HttpServer, Kernel } from "../mod.ts";
import { libraryPath, tempDir } from "./_helpers.ts";

const HOST = "127.0.0.1";
const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** Each char one byte (its code must be < 256): raw bytes written as text. */
function bytes(text: string): Uint8Array<ArrayBuffer> {
  return Uint8Array.from(text, (char) => char.charCodeAt(0));
}

/** Each byte one char. */
function latin1(data: Uint8Array): string {
  let text = "";
  for (const byte of data) text += String.fromCharCode(byte);
  return text;
}

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface RawResponse {
  status: number;
  /** Header lines, names lower-cased. */
  headers: [string, string][];
  body: Uint8Array;
  text: string;
}

function header(response: RawResponse, name: string): string | undefined {
  return response.headers.find(([key]) => key === name)?.[1];
}

/** One raw HTTP/1 connection: write bytes, read responses, see whether it closed. */
class Raw {
  #buffer = new Uint8Array(0);
  #eof = false;
  #pending: Promise<number | null> | null = null;
  #chunk = new Uint8Array(65536);

  private constructor(readonly conn: Deno.TcpConn) {}

  static async open(port: number): Promise<Raw> {
    return new Raw(await Deno.connect({ hostname: HOST, port }));
  }

  async send(data: string | Uint8Array): Promise<void> {
    // The server may answer (and close) before taking everything.
    await this.conn.write(typeof data === "string" ? bytes(data) : data).catch(() => {});
  }

  /** Reads more bytes; false on EOF/reset or when `ms` passed without any. */
  async #more(ms: number): Promise<boolean> {
    if (this.#eof) return false;
    this.#pending ??= this.conn.read(this.#chunk).catch(() => null);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), ms);
    });
    const count = await Promise.race([this.#pending, timeout]);
    clearTimeout(timer);
    if (count === "timeout") return false;
    this.#pending = null;
    if (count === null || count === 0) {
      this.#eof = true;
      return false;
    }
    this.#buffer = concat(this.#buffer, this.#chunk.slice(0, count));
    return true;
  }

  /** The next response (`head`: a response to HEAD, no body). */
  async response(head = false, ms = 5000): Promise<RawResponse> {
    const deadline = Date.now() + ms;
    const more = async () => {
      if (!(await this.#more(Math.max(1, deadline - Date.now())))) {
        throw new Error(
          `no complete response (${this.#eof ? "closed" : "timeout"}): ${
            JSON.stringify(latin1(this.#buffer))
          }`,
        );
      }
    };
    let end: number;
    while ((end = latin1(this.#buffer).indexOf("\r\n\r\n")) < 0) await more();
    const lines = latin1(this.#buffer.subarray(0, end)).split("\r\n");
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0])?.[1] ?? 0);
    const headers = lines.slice(1).map((line): [string, string] => {
      const colon = line.indexOf(":");
      return [line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim()];
    });
    this.#buffer = this.#buffer.slice(end + 4);
    const response = { status, headers, body: new Uint8Array(0), text: "" };
    if (status < 200) return response;
    const length = header(response, "content-length");
    if (head || status === 204 || status === 304) {
      // No body.
    } else if (header(response, "transfer-encoding") === "chunked") {
      const parts: Uint8Array[] = [];
      while (true) {
        let lineEnd: number;
        while ((lineEnd = latin1(this.#buffer).indexOf("\r\n")) < 0) await more();
        const size = parseInt(latin1(this.#buffer.subarray(0, lineEnd)), 16);
        while (this.#buffer.length < lineEnd + 2 + size + 2) await more();
        parts.push(this.#buffer.slice(lineEnd + 2, lineEnd + 2 + size));
        this.#buffer = this.#buffer.slice(lineEnd + 2 + size + 2);
        if (size === 0) break;
      }
      response.body = concat(...parts);
    } else if (length !== undefined) {
      while (this.#buffer.length < Number(length)) await more();
      response.body = this.#buffer.slice(0, Number(length));
      this.#buffer = this.#buffer.slice(Number(length));
    } else {
      while (await this.#more(Math.max(1, deadline - Date.now())));
      response.body = this.#buffer;
      this.#buffer = new Uint8Array(0);
    }
    response.text = utf8Decoder.decode(response.body);
    return response;
  }

  /** True when the server closes the connection within `ms` (sending nothing more). */
  async closes(ms = 3000): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (!(await this.#more(Math.max(1, deadline - Date.now())))) return this.#eof;
    }
    return this.#eof;
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

/**
 * Sends `request` on a fresh connection and reads one response; `open`
 * tells whether the connection still serves a further request afterwards
 * (a GET of `probe` answered), or was closed by the server.
 */
async function exchange(
  port: number,
  request: string | Uint8Array,
  { head = false, probe = "/static/probe" }: { head?: boolean; probe?: string } = {},
): Promise<RawResponse & { open: boolean }> {
  const raw = await Raw.open(port);
  try {
    await raw.send(request);
    const response = await raw.response(head);
    await raw.send(`GET ${probe} HTTP/1.1\r\nHost: a\r\n\r\n`);
    let open = false;
    try {
      open = (await raw.response(false, 3000)).status === 200;
    } catch {
      open = false;
    }
    return { ...response, open };
  } finally {
    raw.close();
  }
}

/** A raw TCP upstream that answers each request with the exact request line and head it got (no Date). */
function echoUpstream(): { port: number; close(): void } {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const connections = new Set<Deno.Conn>();
  (async () => {
    for await (const conn of listener) {
      connections.add(conn);
      (async () => {
        let buffer = new Uint8Array(0);
        const chunk = new Uint8Array(65536);
        try {
          while (true) {
            let end: number;
            while ((end = latin1(buffer).indexOf("\r\n\r\n")) < 0) {
              const n = await conn.read(chunk);
              if (n === null) return;
              buffer = concat(buffer, chunk.slice(0, n));
            }
            const head = latin1(buffer.subarray(0, end));
            buffer = buffer.slice(end + 4);
            const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
            const chunked = /\r\ntransfer-encoding: *chunked/i.test(head);
            const bodyEnd = () => chunked ? latin1(buffer).indexOf("0\r\n\r\n") : length;
            while ((chunked ? bodyEnd() < 0 : buffer.length < length)) {
              const n = await conn.read(chunk);
              if (n === null) return;
              buffer = concat(buffer, chunk.slice(0, n));
            }
            const taken = chunked ? bodyEnd() + 5 : length;
            const body = latin1(buffer.subarray(0, taken));
            buffer = buffer.slice(taken);
            const answer = utf8.encode(JSON.stringify({ head, body }));
            await conn.write(concat(
              bytes(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n`),
              bytes(`content-length: ${answer.length}\r\n\r\n`),
              answer,
            ));
          }
        } catch {
          // The kernel closed its pooled connection.
        } finally {
          connections.delete(conn);
          try {
            conn.close();
          } catch {
            // Closed.
          }
        }
      })();
    }
  })();
  return {
    port: listener.addr.port,
    close() {
      listener.close();
      for (const conn of connections) {
        try {
          conn.close();
        } catch {
          // Closed.
        }
      }
    },
  };
}

/** What a handler reports about its request (the same JSON from the kernel's JS route and Deno.serve). */
async function describe(request: Request): Promise<Response> {
  const url = new URL(request.url);
  const body = request.body === null ? "" : await request.text();
  return Response.json({
    path: url.pathname + url.search,
    method: request.method,
    body,
    headers: [...request.headers],
  });
}

async function edgeServer(
  options: { bodyTimeoutMs?: number } = {},
): Promise<
  { kernel: Kernel; server: HttpServer; port: number; upstream: number } & AsyncDisposable
> {
  const upstream = echoUpstream();
  const kernel = await Kernel.open({ dataDir: null, libraryPath: libraryPath() });
  const server = kernel.http.serve({
    hostname: HOST,
    port: 0,
    routes: [
      { match: { path: "/admin" }, respond: { status: 403, body: "forbidden" } },
      // Larger than HTTP/2's initial window: the stream stays open while
      // h2spec sends its frames (a tiny answer would close it first, and
      // a frame on a closed stream proves nothing).
      { match: { path: "/static/big" }, respond: { status: 200, body: "x".repeat(100_000) } },
      { match: { pathPrefix: "/static/" }, respond: { status: 200, body: "static" } },
      { match: { pathPrefix: "/proxy/" }, proxy: { upstreams: [`${HOST}:${upstream.port}`] } },
    ],
    handler: describe,
    limits: { maxBodyBytes: 1 << 20, bodyTimeoutMs: options.bodyTimeoutMs ?? 30_000 },
  });
  return {
    kernel,
    server,
    port: server.addr.port,
    upstream: upstream.port,
    async [Symbol.asyncDispose]() {
      await server.shutdown({ graceMs: 0 });
      await kernel.close();
      upstream.close();
    },
  };
}

/** The three route kinds, by path prefix. */
const KINDS = ["/static/", "/js/", "/proxy/"] as const;

// ---------------------------------------------------------------------------

Deno.test("http edges: dot segments and escapes cannot escape a route; every kind sees the normalized path", async () => {
  await using edge = await edgeServer();
  // A static 403 for /admin: reached however the path is spelled, over any route kind.
  for (
    const target of [
      "/admin",
      "/static/../admin",
      "/js/../admin",
      "/proxy/../admin",
      "/proxy/%2e%2e/admin",
      "/proxy/%2E%2E/admin",
      "/js/.%2e/admin",
      "/js/x/../../admin",
      "/static/./../admin",
      "//admin",
      "/./admin",
      "/%61dmin",
    ]
  ) {
    const response = await exchange(edge.port, `GET ${target} HTTP/1.1\r\nHost: a\r\n\r\n`);
    assert.equal(response.status, 403, target);
    assert.equal(response.text, "forbidden", target);
    assert.equal(response.open, true, target);
  }
  // The JS handler sees the path the kernel routed.
  const js = await exchange(
    edge.port,
    "GET /js/a/./b//c/../d%7e%41?q=/../x HTTP/1.1\r\nHost: a\r\n\r\n",
  );
  assert.equal(js.status, 200);
  assert.equal(JSON.parse(js.text).path, "/js/a/b/d~A?q=/../x");
  assert.equal(js.open, true);
  // The upstream gets the normalized path (the query untouched), fast path and Pingora's (a body).
  for (const body of [false, true]) {
    const request = body
      ? "POST /proxy/a/%2E/b//c/../d?q=/../x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
      : "GET /proxy/a/%2E/b//c/../d?q=/../x HTTP/1.1\r\nHost: a\r\n\r\n";
    const proxied = await exchange(edge.port, request);
    assert.equal(proxied.status, 200);
    const line = JSON.parse(proxied.text).head.split("\r\n")[0];
    assert.equal(line, `${body ? "POST" : "GET"} /proxy/a/b/d?q=/../x HTTP/1.1`);
  }
});

Deno.test("http edges: a proxy prefix cannot reach past itself on python3 -m http.server", async () => {
  using dir = tempDir();
  await Deno.mkdir(`${dir.path}/public`);
  await Deno.mkdir(`${dir.path}/admin`);
  await Deno.writeTextFile(`${dir.path}/public/index.txt`, "public");
  await Deno.writeTextFile(`${dir.path}/admin/secret.txt`, "secret");
  const pythonPort = (() => {
    const listener = Deno.listen({ hostname: HOST, port: 0 });
    const { port } = listener.addr;
    listener.close();
    return port;
  })();
  const python = new Deno.Command("python3", {
    args: ["-m", "http.server", String(pythonPort), "--bind", HOST, "--directory", dir.path],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    for (let attempt = 0;; attempt++) {
      try {
        (await Deno.connect({ hostname: HOST, port: pythonPort })).close();
        break;
      } catch (error) {
        if (attempt > 100) throw error;
        await delay(50);
      }
    }
    await using kernel = await Kernel.open({ dataDir: null, libraryPath: libraryPath() });
    await using server = kernel.http.serve({
      hostname: HOST,
      port: 0,
      routes: [
        { match: { pathPrefix: "/admin/" }, respond: { status: 403, body: "forbidden" } },
        { match: { pathPrefix: "/public/" }, proxy: { upstreams: [`${HOST}:${pythonPort}`] } },
      ],
    });
    const port = server.addr.port;
    const ok = await exchange(port, "GET /public/index.txt HTTP/1.1\r\nHost: a\r\n\r\n", {
      probe: "/public/index.txt",
    });
    assert.deepEqual([ok.status, ok.text, ok.open], [200, "public", true]);
    for (
      const target of [
        "/public/../admin/secret.txt",
        "/public/%2e%2e/admin/secret.txt",
        "/public/%2E%2E/admin/secret.txt",
        "/public//../admin/secret.txt/.",
      ]
    ) {
      const response = await exchange(port, `GET ${target} HTTP/1.1\r\nHost: a\r\n\r\n`, {
        probe: "/public/index.txt",
      });
      assert.equal(response.status, 403, target);
      assert.equal(response.open, true, target);
    }
    // Encoded slashes are refused rather than guessed at.
    const encoded = await exchange(
      port,
      "GET /public/..%2fadmin/secret.txt HTTP/1.1\r\nHost: a\r\n\r\n",
      {
        probe: "/public/index.txt",
      },
    );
    assert.deepEqual([encoded.status, encoded.open], [400, false]);
  } finally {
    python.kill("SIGTERM");
    await python.status;
  }
});

Deno.test("http edges: invalid or unsafe request targets → 400 and close on every route kind", async () => {
  await using edge = await edgeServer();
  for (const kind of KINDS) {
    for (
      const target of [
        `${kind}a%2fb`,
        `${kind}a%2Fb`,
        `${kind}a%5cb`,
        `${kind}a%00b`,
        `${kind}a%zz`,
        `${kind}../../x`,
        `${kind}%2e%2e/%2e%2e/x`,
        `${kind}a\\b`,
        `${kind}a\0b`,
        `${kind}a b`,
        `${kind}a\x01b`,
        `${kind}a\x7fb`,
        `${kind}a#b`,
        `${kind}caf\xe9`,
        `${kind}?q=\x02`,
      ]
    ) {
      const response = await exchange(edge.port, `GET ${target} HTTP/1.1\r\nHost: a\r\n\r\n`);
      assert.equal(response.status, 400, JSON.stringify(target));
      assert.equal(response.open, false, JSON.stringify(target));
      assert.ok(header(response, "date"), "refusals carry a Date too");
    }
  }
});

Deno.test("http edges: framing: CL+TE, no Host, bad Transfer-Encoding, broken chunks → 400 (never 500) and close", async () => {
  await using edge = await edgeServer({ bodyTimeoutMs: 20_000 });
  for (const kind of KINDS) {
    const cases: [string, string, number][] = [
      [
        "CL+TE",
        `POST ${kind}x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
        400,
      ],
      [
        "TE+CL",
        `POST ${kind}x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello`,
        400,
      ],
      ["HTTP/1.1 without Host", `GET ${kind}x HTTP/1.1\r\n\r\n`, 400],
      [
        "TE not ending in chunked",
        `POST ${kind}x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n`,
        400,
      ],
      [
        "bare-LF chunk lines",
        `POST ${kind}x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n`,
        400,
      ],
      [
        "chunk size beyond 64 bits",
        `POST ${kind}x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n`,
        400,
      ],
      [
        "chunk size 2^63 (over maxBodyBytes: refused at once, not after bodyTimeoutMs)",
        `POST ${kind}x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8000000000000000\r\nab`,
        413,
      ],
      [
        "a chunk without a size",
        `POST ${kind}x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n`,
        400,
      ],
    ];
    for (const [name, request, status] of cases) {
      const started = Date.now();
      const response = await exchange(edge.port, request);
      assert.equal(response.status, status, `${kind} ${name}`);
      assert.equal(response.open, false, `${kind} ${name}`);
      assert.ok(Date.now() - started < 10_000, `${kind} ${name}: answered at once`);
    }
    // Broken framing that arrives after the head was handed on: the same answer.
    const raw = await Raw.open(edge.port);
    try {
      await raw.send(
        `POST ${kind}late HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n`,
      );
      await delay(150);
      await raw.send("4\nabcd\n0\n\n");
      const response = await raw.response();
      // A static route answers without reading the body (then closes).
      assert.equal(response.status, kind === "/static/" ? 200 : 400, `${kind} late bare LF`);
      assert.equal(await raw.closes(), true, `${kind} late bare LF closes`);
    } finally {
      raw.close();
    }
    // HTTP/1.0 needs no Host; a well-formed chunked body goes through.
    const old = await exchange(edge.port, `GET ${kind}x HTTP/1.0\r\n\r\n`);
    assert.equal(old.status, 200, `${kind} HTTP/1.0`);
    const chunked = await exchange(
      edge.port,
      `POST ${kind}x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n`,
    );
    assert.equal(chunked.status, 200, `${kind} chunked`);
    if (kind !== "/static/") {
      assert.match(chunked.text, /hello/, `${kind} chunked body`);
    }
  }
});

Deno.test("http edges: every response carries a Date, fast paths and Pingora's", async () => {
  await using edge = await edgeServer();
  const imf = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/;
  const requests: [string, string, boolean?][] = [
    ["static GET", "GET /static/x HTTP/1.1\r\nHost: a\r\n\r\n"],
    ["static HEAD", "HEAD /static/x HTTP/1.1\r\nHost: a\r\n\r\n", true],
    ["static via Pingora (HTTP/1.0)", "GET /static/x HTTP/1.0\r\n\r\n"],
    ["JS GET", "GET /js/x HTTP/1.1\r\nHost: a\r\n\r\n"],
    ["JS POST", "POST /js/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"],
    ["proxy GET (upstream sends no Date)", "GET /proxy/x HTTP/1.1\r\nHost: a\r\n\r\n"],
    ["proxy POST", "POST /proxy/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"],
    ["400", "GET /js/%2f HTTP/1.1\r\nHost: a\r\n\r\n"],
  ];
  for (const [name, request, head] of requests) {
    const response = await exchange(edge.port, request, { head });
    const dates = response.headers.filter(([key]) => key === "date");
    assert.equal(dates.length, 1, name);
    assert.match(dates[0][1], imf, name);
    assert.ok(Math.abs(Date.parse(dates[0][1]) - Date.now()) < 5000, name);
  }
});

Deno.test("http edges: a handler's hop-by-hop headers are dropped and its connection: close is honoured", async () => {
  const kernel = await Kernel.open({ dataDir: null, libraryPath: libraryPath() });
  const server = kernel.http.serve({
    hostname: HOST,
    port: 0,
    routes: [{ match: { pathPrefix: "/static/" }, respond: { status: 200, body: "static" } }],
    handler: async (request) => {
      if (request.body) await request.text();
      const headers = new Headers({
        "x-kept": "1",
        upgrade: "h2c",
        te: "trailers",
        trailer: "x-t",
        "keep-alive": "timeout=5",
        "proxy-connection": "keep-alive",
      });
      if (new URL(request.url).pathname === "/close") headers.set("connection", "close");
      return new Response("body", { headers });
    },
  });
  try {
    for (
      const request of [
        "GET /keep HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /keep HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
      ]
    ) {
      const response = await exchange(server.addr.port, request);
      assert.equal(response.status, 200);
      assert.equal(header(response, "x-kept"), "1");
      for (const name of ["upgrade", "te", "trailer", "keep-alive", "proxy-connection"]) {
        assert.equal(header(response, name), undefined, `${name} in ${request}`);
      }
      assert.equal(response.open, true);
    }
    for (
      const request of [
        "GET /close HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /close HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
      ]
    ) {
      const response = await exchange(server.addr.port, request);
      assert.equal(response.status, 200);
      assert.equal(response.text, "body");
      assert.equal(header(response, "connection"), "close", request);
      assert.equal(response.open, false, request);
    }
  } finally {
    await server.shutdown({ graceMs: 0 });
    await kernel.close();
  }
});

Deno.test("http edges: Expect: 100-continue is answered before the body on JS and proxy routes", async () => {
  await using edge = await edgeServer();
  for (const kind of ["/js/", "/proxy/"]) {
    const raw = await Raw.open(edge.port);
    try {
      await raw.send(
        `POST ${kind}x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n`,
      );
      const interim = await raw.response(false, 3000);
      assert.equal(interim.status, 100, kind);
      await raw.send("hello");
      const response = await raw.response();
      assert.equal(response.status, 200, kind);
      const seen = JSON.parse(response.text);
      assert.equal(seen.body, "hello", kind);
      if (kind === "/proxy/") {
        // The upstream is not asked again (it would wait or answer 100 twice).
        assert.doesNotMatch(seen.head, /expect/i);
      }
    } finally {
      raw.close();
    }
  }
});

/** The handler's view (JSON) of a request sent as raw bytes, over HTTP/1.1. */
async function viewOverHttp1(port: number, request: Uint8Array): Promise<[number, unknown]> {
  const response = await exchange(port, request, { probe: "/" });
  return [response.status, response.status === 200 ? JSON.parse(response.text) : null];
}

/**
 * One HTTP/2 request (prior knowledge) with extra header bytes: the status
 * (decoded from the response's first header field) and the body.
 */
async function h2Request(
  port: number,
  path: string,
  extra: [string, Uint8Array][] = [],
): Promise<[number, string]> {
  const conn = await Deno.connect({ hostname: HOST, port });
  const frame = (type: number, flags: number, stream: number, payload: Uint8Array) => {
    const out = new Uint8Array(9 + payload.length);
    out.set([payload.length >> 16, (payload.length >> 8) & 255, payload.length & 255, type, flags]);
    new DataView(out.buffer).setUint32(5, stream);
    out.set(payload, 9);
    return out;
  };
  // HPACK: literal header fields without indexing, no Huffman (lengths < 127).
  const literal = (name: string, value: Uint8Array) =>
    concat(new Uint8Array([0, name.length]), bytes(name), new Uint8Array([value.length]), value);
  try {
    const block = concat(
      literal(":method", bytes("GET")),
      literal(":scheme", bytes("http")),
      literal(":path", bytes(path)),
      literal(":authority", bytes(`${HOST}:${port}`)),
      ...extra.map(([name, value]) => literal(name, value)),
    );
    await conn.write(concat(
      bytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
      frame(4, 0, 0, new Uint8Array(0)),
      frame(1, 0x5, 1, block),
    ));
    let buffer = new Uint8Array(0);
    let status = 0;
    let body = new Uint8Array(0);
    const chunk = new Uint8Array(65536);
    while (true) {
      const n = await conn.read(chunk);
      if (n === null) throw new Error("the server closed the HTTP/2 connection");
      buffer = concat(buffer, chunk.slice(0, n));
      while (buffer.length >= 9) {
        const length = (buffer[0] << 16) | (buffer[1] << 8) | buffer[2];
        if (buffer.length < 9 + length) break;
        const [type, flags] = [buffer[3], buffer[4]];
        const id = new DataView(buffer.buffer, buffer.byteOffset).getUint32(5) & 0x7fffffff;
        const payload = buffer.slice(9, 9 + length);
        buffer = buffer.slice(9 + length);
        if (type === 4 && (flags & 1) === 0) await conn.write(frame(4, 1, 0, new Uint8Array(0)));
        if (id !== 1) continue;
        if (type === 3) throw new Error("RST_STREAM");
        if (type === 1) status = hpackStatus(payload);
        if (type === 0) body = concat(body, payload);
        if ((type === 0 || type === 1) && (flags & 1) !== 0) {
          return [status, utf8Decoder.decode(body)];
        }
      }
    }
  } finally {
    conn.close();
  }
}

/** `:status` from the first field of an HPACK block (indexed, or literal with its name indexed). */
function hpackStatus(block: Uint8Array): number {
  const indexed: Record<number, number> = {
    8: 200,
    9: 204,
    10: 206,
    11: 304,
    12: 400,
    13: 404,
    14: 500,
  };
  if ((block[0] & 0x80) !== 0) return indexed[block[0] & 0x7f] ?? 0;
  const length = block[1] & 0x7f;
  const value = block.subarray(2, 2 + length);
  if ((block[1] & 0x80) === 0) return Number(latin1(value));
  // Huffman (RFC 7541 Appendix B), digits only: 0-2 are 5 bits, 3-9 are 6 bits.
  let bits = "";
  for (const byte of value) bits += byte.toString(2).padStart(8, "0");
  let digits = "";
  for (let at = 0; digits.length < 3;) {
    const five = parseInt(bits.slice(at, at + 5), 2);
    if (five <= 2) {
      digits += five;
      at += 5;
    } else {
      digits += parseInt(bits.slice(at, at + 6), 2) - 0b011001 + 3;
      at += 6;
    }
  }
  return Number(digits);
}

Deno.test("http edges: header bytes reach the JS handler exactly as Deno.serve gives them (HTTP/1.1 and HTTP/2)", async () => {
  await using edge = await edgeServer();
  const reference = Deno.serve({ hostname: HOST, port: 0, onListen: () => {} }, describe);
  try {
    const values: [string, Uint8Array][] = [
      ["cookie", utf8.encode("n=José")],
      ["x-utf8", utf8.encode("日本語 ✓")],
      ["x-latin1", bytes("caf\xe9")],
      ["x-high", bytes("\x80\xff")],
    ];
    const head = (method: string, body: string) =>
      concat(
        bytes(`${method} /js/h HTTP/1.1\r\nHost: a\r\n`),
        ...values.map(([name, value]) => concat(bytes(`${name}: `), value, bytes("\r\n"))),
        bytes(body ? `Content-Length: ${body.length}\r\n\r\n${body}` : "\r\n"),
      );
    for (const body of ["", "hi"]) {
      const method = body ? "POST" : "GET";
      const [ourStatus, ours] = await viewOverHttp1(edge.port, head(method, body));
      const [theirStatus, theirs] = await viewOverHttp1(reference.addr.port, head(method, body));
      assert.equal(theirStatus, 200);
      assert.equal(ourStatus, 200, `${method}: every header Deno.serve accepts is accepted`);
      const pick = (view: unknown) =>
        (view as { headers: [string, string][] }).headers.filter(([name]) =>
          values.some(([key]) => key === name)
        );
      assert.deepEqual(pick(ours), pick(theirs), method);
      assert.deepEqual(
        pick(ours).find(([name]) => name === "cookie"),
        ["cookie", latin1(utf8.encode("n=José"))],
      );
    }
    // HTTP/2: the same bytes in HPACK literals.
    const [ourStatus, ours] = await h2Request(edge.port, "/js/h", values);
    const [theirStatus, theirs] = await h2Request(reference.addr.port, "/js/h", values);
    assert.equal(theirStatus, 200);
    assert.equal(ourStatus, 200);
    const pick = (text: string) =>
      (JSON.parse(text).headers as [string, string][]).filter(([name]) =>
        values.some(([key]) => key === name)
      );
    assert.deepEqual(pick(ours), pick(theirs));
  } finally {
    await reference.shutdown();
  }
});

Deno.test("http edges: HTTP/2 targets are normalized and refused by the same rules", async () => {
  await using edge = await edgeServer();
  for (const path of ["/js/../admin", "/proxy/%2e%2e/admin", "/static//../admin", "//admin"]) {
    const [status, body] = await h2Request(edge.port, path);
    assert.deepEqual([status, body], [403, "forbidden"], path);
  }
  const [status, body] = await h2Request(edge.port, "/js/a/./b/../c?x=/../");
  assert.equal(status, 200);
  assert.equal(JSON.parse(body).path, "/js/a/c?x=/../");
  for (const path of ["/js/a%2fb", "/proxy/../../x", "/static/a%00"]) {
    const [refused] = await h2Request(edge.port, path);
    assert.equal(refused, 400, path);
  }
});

/** h2spec: the binary installed by .ci/run (`go install`), on PATH or in ~/go/bin. */
function h2specPath(): string {
  for (
    const dir of [...(Deno.env.get("PATH") ?? "").split(":"), `${Deno.env.get("HOME")}/go/bin`]
  ) {
    try {
      Deno.statSync(`${dir}/h2spec`);
      return `${dir}/h2spec`;
    } catch {
      // Not here.
    }
  }
  throw new Error(
    "h2spec not found: install it with `go install github.com/summerwind/h2spec/cmd/h2spec@latest` (.ci/run does)",
  );
}

/** The h2spec test cases that passed against `port` + `path` (keys: section + title + ordinal). */
async function h2spec(port: number, path: string): Promise<Set<string>> {
  using dir = tempDir();
  const report = `${dir.path}/report.xml`;
  await new Deno.Command(h2specPath(), {
    args: ["-h", HOST, "-p", String(port), "-P", path, "-o", "2", "-j", report],
    stdout: "null",
    stderr: "null",
  }).output();
  const xml = await Deno.readTextFile(report);
  const passed = new Set<string>();
  const seen = new Map<string, number>();
  for (
    const match of xml.matchAll(
      /<testcase package="([^"]*)" classname="([^"]*)"[^>]*>([\s\S]*?)<\/testcase>/g,
    )
  ) {
    const base = `${match[1]} ${match[2]}`;
    const ordinal = (seen.get(base) ?? 0) + 1;
    seen.set(base, ordinal);
    if (!/<(failure|skipped|error)/.test(match[3])) passed.add(`${base} #${ordinal}`);
  }
  assert.ok(seen.size > 100, `h2spec ran (${seen.size} cases)`);
  return passed;
}

Deno.test("http edges: h2spec passes at least what Deno.serve passes, on every route kind", async () => {
  await using edge = await edgeServer();
  const reference = Deno.serve({ hostname: HOST, port: 0, onListen: () => {} }, describe);
  try {
    const anchor = await h2spec(reference.addr.port, "/js/x");
    for (const kind of KINDS) {
      const ours = await h2spec(edge.port, kind === "/static/" ? "/static/big" : `${kind}x`);
      const missing = [...anchor].filter((name) => !ours.has(name));
      assert.deepEqual(
        missing,
        [],
        `${kind}: passes what Deno.serve passes (${ours.size} vs ${anchor.size})`,
      );
    }
  } finally {
    await reference.shutdown();
  }
});
