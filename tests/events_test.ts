// The kernel's event queue as JS sees it: pumps spin briefly after events
// (spin-then-park) and must then really park — an idle app burns no CPU —
// and events for two kernels in one process are never lost while one of
// them spins.
import assert from "node:assert/strict";
import { Kernel, type Link } from "../mod.ts";
import { libraryPath, threadNames, threadsLeft } from "./_helpers.ts";

/** CPU time (µs) this process spent so far, from /proc (Linux). */
function processCpuMicros(): number {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks * 10_000; // USER_HZ is 100 on Linux
}

async function linkPair(server: Kernel, client: Kernel): Promise<[Link, Link, () => void]> {
  const { cert, key } = server.transport.createDevCertificate();
  const listener = await server.transport.listen({ cert, key });
  const connecting = client.transport.connect({
    hostname: "127.0.0.1",
    port: listener.addr.port,
    serverName: "localhost",
    caCerts: [cert],
  });
  const peer = (await listener.accept())!;
  return [await connecting, peer, () => listener.close()];
}

Deno.test({
  name: "events: ping-pong across two kernels loses nothing, then the pumps park (no idle CPU)",
  ignore: Deno.build.os !== "linux",
  async fn() {
    await using server = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
    await using client = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
    const [link, peer, closeListener] = await linkPair(server, client);
    const echo = (async () => {
      for await (const packet of peer) await peer.send(packet.data);
    })();
    // Replies come within the spin window: each one must still arrive, in
    // order, whichever kernel's pump is spinning when it lands.
    for (let round = 0; round < 2_000; round++) {
      await link.send(new Uint8Array([round & 0xff, round >> 8]));
      const reply = await link.receive();
      assert.ok(reply !== null, `reply ${round} lost`);
      assert.deepEqual([...reply.data], [round & 0xff, round >> 8]);
    }
    // Idle with a receive pending on both links: after at most one spin the
    // pumps park; the process must not keep a core busy.
    const pending = link.receive();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const before = processCpuMicros();
    const started = performance.now();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const spentMicros = processCpuMicros() - before;
    const wallMicros = (performance.now() - started) * 1000;
    assert.ok(
      spentMicros < wallMicros * 0.2,
      `an idle process used ${spentMicros} µs of CPU in ${Math.round(wallMicros)} µs`,
    );
    // And a parked pump still wakes.
    await peer.send(new Uint8Array([7]));
    const late = await pending;
    assert.deepEqual([...late!.data], [7]);
    await link.close();
    await echo;
    await peer.close();
    closeListener();
  },
});

Deno.test({
  name: "events: a kernel's threads (waker, transport) are gone once close returns",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const threads = (): string[] =>
      threadNames().filter((name) => name === "krepis-waker" || name === "krepis-knul");
    const before = threads().length;
    for (let round = 0; round < 5; round++) {
      const server = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
      const client = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
      const [link, peer, closeListener] = await linkPair(server, client);
      await link.send(new Uint8Array([1]));
      assert.deepEqual([...(await peer.receive())!.data], [1]);
      assert.ok(threads().length > before, "the kernels run a waker and a transport thread");
      closeListener();
      await client.close();
      await server.close();
      const left = await threadsLeft((name) => name === "krepis-waker" || name === "krepis-knul");
      assert.equal(left.length, before, left.join(","));
    }
  },
});
