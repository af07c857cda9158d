import assert from "node:assert/strict";
import {
  ClosedError,
  createContext,
  InvalidArgumentError,
  Kernel,
  ProtocolError,
  ResourceExhaustedError,
  RuntimeError,
} from "../mod.ts";
import type { RuntimeEvent, RuntimePool } from "../mod.ts";
import { denoPermissionFlags } from "../bindings/runtimes/_flags.ts";
import { libraryPath } from "./_helpers.ts";

const linux = Deno.build.os === "linux";
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
const open = () => Kernel.open({ libraryPath: libraryPath(), dataDir: null, workerThreads: 2 });
const echo = new URL("./fixtures/runtimes/echo.ts", import.meta.url);
const hostile = new URL("./fixtures/runtimes/hostile.ts", import.meta.url);

/** Records a pool's events; `next(predicate)` waits for one that matches. */
function watch(pool: RuntimePool) {
  const seen: RuntimeEvent[] = [];
  let wake: (() => void) | undefined;
  const done = (async () => {
    for await (const event of pool.events()) {
      seen.push(event);
      wake?.();
    }
  })();
  return {
    seen,
    done,
    async next<T extends RuntimeEvent["type"]>(
      type: T,
      where: (event: Extract<RuntimeEvent, { type: T }>) => boolean = () => true,
      timeoutMs = 60_000,
    ): Promise<Extract<RuntimeEvent, { type: T }>> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = seen.find((event) =>
          event.type === type && where(event as Extract<RuntimeEvent, { type: T }>)
        );
        if (found !== undefined) return found as Extract<RuntimeEvent, { type: T }>;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no ${type} event; saw ${JSON.stringify(seen)}`);
        let timer: ReturnType<typeof setTimeout> | undefined;
        await new Promise<void>((resolve) => {
          wake = resolve;
          timer = setTimeout(resolve, left);
        });
        clearTimeout(timer);
      }
    },
  };
}

/** True while `pid` is a live (not zombie) process. */
function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

async function gone(pid: number, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (alive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
}

function kinds(event: { violations: readonly { kind: string; detail: string }[] }): string[] {
  return event.violations.map((violation) => `${violation.kind} ${violation.detail}`);
}

Deno.test("permissions become exactly the Deno flags they name", () => {
  assert.deepEqual(denoPermissionFlags(undefined).flags, [
    "--no-prompt",
    "--allow-env=KREPIS_RUNTIME_MAX_MESSAGE_BYTES",
  ]);
  const { flags } = denoPermissionFlags({
    read: ["/srv/a", "/srv/b"],
    write: ["/tmp/w"],
    net: ["api.example.com:443"],
    env: ["TZ"],
    run: ["/bin/cat"],
    sys: ["hostname"],
  });
  assert.deepEqual(flags, [
    "--no-prompt",
    "--allow-read=/srv/a,/srv/b",
    "--allow-write=/tmp/w",
    "--allow-net=api.example.com:443",
    "--allow-env=KREPIS_RUNTIME_MAX_MESSAGE_BYTES,TZ",
    "--allow-run=/bin/cat",
    "--allow-sys=hostname",
  ]);
  assert.ok(!flags.some((flag) => flag === "-A" || flag.startsWith("--allow-all")));
  assert.ok(!flags.some((flag) => flag.startsWith("--allow-ffi")), "ffi only when asked");
  assert.ok(denoPermissionFlags({ ffi: ["/lib/x.so"] }).flags.includes("--allow-ffi=/lib/x.so"));
  assert.throws(() => denoPermissionFlags({ read: ["relative"] }), InvalidArgumentError);
  assert.throws(() => denoPermissionFlags({ net: ["a,b"] }), InvalidArgumentError);
  assert.throws(() => denoPermissionFlags({ all: true } as never), InvalidArgumentError);
});

Deno.test("requests reach the least-busy instance with their context; stats show CPU and memory", async () => {
  if (!linux) return;
  await using kernel = await open();
  await using pool = await kernel.runtimes.spawn({ module: echo, instances: 2 });
  assert.equal(text(await pool.request("echo hi")), "hi");
  const ctx = createContext({
    tenantId: "acme",
    traceId: "0af7651916cd43dd8448eb211c80319c",
    timeoutMs: 60_000,
  });
  const seen = JSON.parse(text(await pool.request("ctx", { ctx })));
  assert.equal(seen.tenantId, "acme");
  assert.equal(seen.traceId, ctx.traceId);
  assert.equal(seen.requestId, ctx.requestId);
  assert.equal(seen.deadline, ctx.deadline);
  // Two slow requests at once go to two instances (the least busy).
  const pids = await Promise.all([pool.request("sleep 200"), pool.request("sleep 200")]);
  assert.deepEqual(pids.map(text), ["slept 200", "slept 200"]);
  const stats = pool.stats();
  assert.equal(stats.instances.length, 2);
  for (const instance of stats.instances) {
    assert.equal(instance.state, "ready");
    assert.ok(instance.requests >= 1, `instance ${instance.instance} got requests`);
    assert.ok(instance.rssBytes > 1 << 20, `rss ${instance.rssBytes}`);
    assert.ok(instance.cpuMs > 0, `cpu ${instance.cpuMs}`);
    assert.ok(alive(instance.pid));
  }
  // A handler that throws fails only its request.
  await assert.rejects(
    pool.request("throw nope"),
    (error) =>
      error instanceof RuntimeError && error.details.reason === "handler" &&
      error.message.includes("nope"),
  );
  assert.equal(text(await pool.request("echo still")), "still");
  // A deadline (ctx or timeoutMs) bounds the wait; the late answer is dropped.
  await assert.rejects(
    pool.request("sleep 3000", { timeoutMs: 100 }),
    (error) => error instanceof RuntimeError && error.details.reason === "deadline",
  );
  await assert.rejects(
    pool.request("sleep 3000", { ctx: createContext({ timeoutMs: 100 }) }),
    (error) => error instanceof RuntimeError && error.details.reason === "deadline",
  );
  // Messages from the runtime.
  const events = watch(pool);
  assert.equal(text(await pool.request("send hello parent")), "sent");
  const message = await events.next("message");
  assert.equal(text(message.data), "hello parent");
});

Deno.test("bounded messages: typed errors both ways, the pool serves on", async () => {
  if (!linux) return;
  await using kernel = await open();
  await using pool = await kernel.runtimes.spawn({ module: echo, maxMessageBytes: 64 * 1024 });
  await assert.rejects(
    pool.request(new Uint8Array(64 * 1024 + 1)),
    (error) => error instanceof ResourceExhaustedError && error.details.limit === "65536",
  );
  const big = await pool.request(new Uint8Array(60 * 1024).fill(7));
  assert.equal(big.length, 60 * 1024);
  assert.equal(big[1234], 7);
  // A reply over the bound fails the request in the runtime, not the runtime.
  await assert.rejects(pool.request("size 70000"), RuntimeError);
  assert.equal(text(await pool.request("echo ok")), "ok");
  await assert.rejects(
    kernel.runtimes.spawn({ module: echo, maxMessageBytes: 0 }),
    InvalidArgumentError,
  );
  await assert.rejects(
    kernel.runtimes.spawn({ module: "relative.ts" }),
    InvalidArgumentError,
  );
  await assert.rejects(
    kernel.runtimes.spawn({ module: echo, policy: { net: true } as never }),
    InvalidArgumentError,
  );
});

Deno.test("back-pressure: a runtime that stops reading fills its channel; requests wait, none is lost", async () => {
  if (!linux) return;
  await using kernel = await open();
  await using pool = await kernel.runtimes.spawn({ module: echo, health: false });
  const blocked = pool.request("block 1500");
  // ~12 MiB of requests: far more than the pipe and the 4 MiB ring hold.
  const bodies = Array.from({ length: 40 }, (_, index) => new Uint8Array(300_000).fill(index));
  const replies = bodies.map((body) => pool.request(body));
  await new Promise((resolve) => setTimeout(resolve, 300));
  const stats = pool.stats();
  assert.equal(stats.instances[0].state, "ready");
  assert.equal(stats.inFlight, 41);
  // The channel to the child is full (the rest waits in request()).
  assert.ok(
    kernel.stats().buffers.ringUsedBytes >= 3 << 20,
    `ring use ${kernel.stats().buffers.ringUsedBytes}`,
  );
  assert.equal(text(await blocked), "unblocked");
  const answered = await Promise.all(replies);
  answered.forEach((reply, index) => {
    assert.equal(reply.length, 300_000);
    assert.ok(reply.every((byte) => byte === index), `reply ${index} intact`);
  });
});

Deno.test("a module that does not start is a RuntimeError with its stderr", async () => {
  if (!linux) return;
  await using kernel = await open();
  const broken = new URL("./fixtures/runtimes/missing_module.ts", import.meta.url);
  await assert.rejects(
    kernel.runtimes.spawn({ module: broken }),
    (error) =>
      error instanceof RuntimeError && error.details.reason === "start_failed" &&
      /missing_module/.test(error.message),
  );
});

Deno.test("permissions are enforced by Deno and, past Deno, by the guard", async () => {
  if (!linux) return;
  await using kernel = await open();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  await using pool = await kernel.runtimes.spawn({
    module: echo,
    permissions: { run: ["/bin/cat", Deno.execPath()] },
  });
  const events = watch(pool);
  const denied = (what: RegExp) => (error: unknown) =>
    error instanceof RuntimeError && error.details.reason === "handler" &&
    /NotCapable|Requires/.test(error.message) && what.test(error.message);
  // Deno's layer: read, net and run outside the permissions.
  await assert.rejects(pool.request("read /etc/hostname"), denied(/read/));
  await assert.rejects(pool.request(`connect ${port}`), denied(/net/));
  await assert.rejects(pool.request('run ["/bin/sh","-c","true"]'), denied(/run/));
  // The guard's layer: a program Deno may run is outside Deno's checks; the
  // sandbox refuses its read and its connect, and reports both.
  const cat = JSON.parse(text(await pool.request('run ["/bin/cat","/etc/hostname"]')));
  assert.notEqual(cat.code, 0);
  assert.match(cat.stderr, /Permission denied/);
  const script = `await Deno.connect({ hostname: "127.0.0.1", port: ${port} })`;
  const connect = JSON.parse(
    text(await pool.request(`run ${JSON.stringify([Deno.execPath(), "eval", "-A", script])}`)),
  );
  assert.notEqual(connect.code, 0, connect.stderr);
  await pool.close();
  const exited = await events.next("exited");
  const reported = kinds(exited);
  assert.ok(reported.some((line) => line === "read /etc/hostname"), reported.join("\n"));
  assert.ok(reported.some((line) => line.startsWith("net")), reported.join("\n"));
  assert.ok(exited.isolation?.applied.includes("landlock"), "the report names each layer");
  assert.ok(exited.isolation?.applied.includes("seccomp"));
  assert.ok(exited.isolation?.applied.includes("net_namespace"));
  listener.close();
});

Deno.test("a memory hog is stopped by the guard's limit and restarted", async () => {
  if (!linux) return;
  await using kernel = await open();
  await using pool = await kernel.runtimes.spawn({
    module: echo,
    policy: { maxMemoryBytes: 192 << 20 },
    restart: { maxRestarts: 2, backoffMs: 10 },
  });
  const events = watch(pool);
  await assert.rejects(
    pool.request("hog"),
    (error) => error instanceof RuntimeError && error.details.reason === "crashed",
  );
  const exited = await events.next("exited");
  assert.equal(exited.signal, "SIGKILL");
  assert.ok(exited.violations.some((v) => v.kind === "memory"), kinds(exited).join("\n"));
  await events.next("started", (event) => event.pid !== exited.pid);
  assert.equal(text(await pool.request("echo back")), "back");
});

Deno.test("crash → exited event with code and stderr tail → restart with backoff → serving again", async () => {
  if (!linux) return;
  await using kernel = await open();
  await using pool = await kernel.runtimes.spawn({
    module: echo,
    instances: 2,
    restart: { maxRestarts: 1, backoffMs: 50 },
  });
  const events = watch(pool);
  const slow = pool.request("sleep 400"); // on one instance
  const crash = pool.request("crash 3"); // on the other (least busy)
  await assert.rejects(
    crash,
    (error) => error instanceof RuntimeError && error.details.reason === "crashed",
  );
  assert.equal(text(await slow), "slept 400", "the other instance kept its request");
  const exited = await events.next("exited");
  assert.equal(exited.code, 3);
  assert.equal(exited.signal, null);
  assert.equal(exited.reason, "crashed");
  assert.match(exited.stderrTail, /crashing on purpose/);
  const restarted = await events.next("restarted");
  assert.equal(restarted.instance, exited.instance);
  assert.equal(restarted.attempt, 1);
  await events.next("started", (event) => event.pid === restarted.pid);
  assert.equal(pool.stats().restarts, 1);
  // Past maxRestarts an instance is given up; the other serves on.
  while (!events.seen.some((event) => event.type === "gave_up")) {
    await assert.rejects(pool.request("crash 4"), RuntimeError);
    await events.next("exited", (event) => event.code === 4);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const gaveUp = await events.next("gave_up");
  assert.equal(gaveUp.restarts, 1);
  assert.equal(
    pool.stats().instances.find((instance) => instance.instance === gaveUp.instance)?.state,
    "given_up",
  );
  assert.equal(text(await pool.request("echo survivor")), "survivor");
});

Deno.test("a hung runtime is killed by the health check and restarted", async () => {
  if (!linux) return;
  await using kernel = await open();
  await using pool = await kernel.runtimes.spawn({
    module: echo,
    health: { intervalMs: 100, timeoutMs: 300 },
    restart: { backoffMs: 10 },
  });
  const events = watch(pool);
  await assert.rejects(
    pool.request("hang"),
    (error) => error instanceof RuntimeError && error.details.reason === "unhealthy",
  );
  const exited = await events.next("exited");
  assert.equal(exited.reason, "unhealthy");
  assert.equal(exited.signal, "SIGKILL");
  await events.next("started", (event) => event.pid !== exited.pid);
  assert.equal(text(await pool.request("echo alive")), "alive");
  assert.ok(await gone(exited.pid));
});

Deno.test("close drains: requests in flight complete, new ones are refused, children exit", async () => {
  if (!linux) return;
  await using kernel = await open();
  const pool = await kernel.runtimes.spawn({ module: echo, instances: 2 });
  const events = watch(pool);
  const pids = pool.stats().instances.map((instance) => instance.pid);
  const inFlight = [pool.request("sleep 300"), pool.request("sleep 300")];
  await new Promise((resolve) => setTimeout(resolve, 50));
  const closing = pool.close({ graceMs: 5000 });
  await assert.rejects(pool.request("echo late"), ClosedError);
  assert.deepEqual((await Promise.all(inFlight)).map(text), ["slept 300", "slept 300"]);
  await closing;
  await events.done;
  const exits = events.seen.filter((event) => event.type === "exited");
  assert.equal(exits.length, 2);
  for (const exit of exits) {
    if (exit.type !== "exited") continue;
    assert.equal(exit.reason, "closed");
    assert.equal(exit.code, 0, "the child module exits once its stdin closes");
  }
  for (const pid of pids) assert.ok(await gone(pid), `pid ${pid} is gone`);
  // A drain past its grace kills what is still running.
  const slow = await kernel.runtimes.spawn({ module: echo });
  const stuck = assert.rejects(slow.request("sleep 30000"), RuntimeError);
  await new Promise((resolve) => setTimeout(resolve, 50));
  const started = Date.now();
  await slow.close({ graceMs: 200 });
  assert.ok(Date.now() - started < 15_000, "the grace bounds the drain");
  await stuck;
});

Deno.test("no child is left behind: SIGKILL of a runtime (and its tree), kernel close", async () => {
  if (!linux) return;
  const kernel = await open();
  const pool = await kernel.runtimes.spawn({
    module: echo,
    instances: 2,
    permissions: { run: ["/bin/sh"] },
    restart: { backoffMs: 10 },
  });
  const events = watch(pool);
  // A grandchild that outlives its shell.
  const spawned = JSON.parse(
    text(await pool.request('run ["/bin/sh","-c","/bin/sleep 60 >/dev/null 2>&1 & echo $!"]')),
  );
  const grandchild = Number(spawned.stdout.trim());
  assert.ok(alive(grandchild));
  const owner = pool.stats().instances.find((instance) => instance.requests === 1)!;
  Deno.kill(owner.pid, "SIGKILL");
  const exited = await events.next("exited");
  assert.equal(exited.pid, owner.pid);
  assert.equal(exited.signal, "SIGKILL");
  assert.ok(await gone(grandchild), "the runtime's tree dies with it");
  await events.next("restarted");
  const pids = () => pool.stats().instances.map((instance) => instance.pid).filter((p) => p > 0);
  await events.next("started", (event) => event.pid !== owner.pid);
  const live = pids();
  assert.equal(live.length, 2);
  const inFlight = assert.rejects(pool.request("sleep 10000"));
  await new Promise((resolve) => setTimeout(resolve, 50));
  await kernel.close();
  await inFlight;
  for (const pid of [...live, owner.pid, grandchild]) assert.ok(await gone(pid), `pid ${pid}`);
  await events.done;
});

Deno.test("hostile runtimes: refused frames are typed errors, the parent and other instances live", async () => {
  if (!linux) return;
  await using kernel = await open();
  await using pool = await kernel.runtimes.spawn({
    module: hostile,
    restart: { maxRestarts: 10, backoffMs: 10 },
  });
  const events = watch(pool);
  for (
    const [attack, field] of [
      ["oversized", "too_large"],
      ["garbage", "magic"],
      ["kind", "kind"],
      ["truncated", "ended inside a frame"],
    ]
  ) {
    const count = events.seen.filter((event) => event.type === "exited").length;
    await assert.rejects(
      pool.request(attack),
      (error) =>
        error instanceof RuntimeError && error.details.reason === "protocol" &&
        error.cause instanceof ProtocolError,
      attack,
    );
    const exited = await events.next(
      "exited",
      () => events.seen.filter((event) => event.type === "exited").length > count,
    );
    const last = events.seen.filter((event) => event.type === "exited").at(-1)!;
    assert.ok(last.type === "exited" && last.reason === "protocol", attack);
    assert.ok(
      last.type === "exited" && last.detail.includes(field),
      `${attack}: ${last.type === "exited" && last.detail}`,
    );
    assert.ok(exited.violations.length >= 0);
    assert.ok(last.type === "exited" && last.violations.some((v) => v.kind === "protocol"));
    await events.next("started", (event) => event.pid !== (last.type === "exited" ? last.pid : 0));
  }
  assert.ok(kernel.stats().uptimeMs > 0, "the parent is alive");
  await using healthy = await kernel.runtimes.spawn({ module: echo });
  assert.equal(text(await healthy.request("echo fine")), "fine");
});

Deno.test("an HTTP route is served by a pool of runtimes", async () => {
  if (!linux) return;
  await using kernel = await open();
  await using pool = await kernel.runtimes.spawn({ module: echo, instances: 2 });
  const controller = new AbortController();
  const server = kernel.http.serve({
    hostname: "127.0.0.1",
    port: 0,
    routes: [{ match: { path: "/health" }, respond: { body: "ok" } }],
    handler: pool,
    signal: controller.signal,
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  const pids = new Set<string>();
  const answers = await Promise.all(
    Array.from({ length: 8 }, () =>
      fetch(`${base}/hello`).then(async (response) => {
        assert.equal(response.status, 200);
        assert.equal(response.headers.get("x-runtime"), "yes");
        return await response.text();
      })),
  );
  for (const answer of answers) {
    const match = /^pid (\d+) GET \/hello$/.exec(answer);
    assert.ok(match, answer);
    pids.add(match[1]);
  }
  const instancePids = pool.stats().instances.map((instance) => String(instance.pid));
  for (const pid of pids) assert.ok(instancePids.includes(pid));
  assert.equal(await (await fetch(`${base}/health`)).text(), "ok");
  controller.abort();
  await server.finished;
});
