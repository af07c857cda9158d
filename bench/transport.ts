/**
 * KNUL links against Deno's own transports, both ends in this process over
 * loopback (as the baselines are):
 *
 * - 64 B packets/s delivered to JS over one link, next to Deno TCP with
 *   length-prefixed frames (one `write` per frame, frames parsed in JS).
 * - 64 B round trips/s (send, the peer's JS echoes, receive), next to Deno
 *   QUIC (`Deno.QuicEndpoint` / `Deno.connectQuic`) on one stream.
 * - One-way latency of a 64 B packet, JS send → kernel → QUIC → kernel →
 *   the peer's JS (one packet in flight; p50 and p99 in µs), against the
 *   15 µs p50 goal.
 * - Bulk MB/s with 1 MiB packets, next to Deno QUIC writing 1 MiB chunks.
 * - A yardstick, no target: 64 B round trips of plain UDP datagrams between
 *   two Deno sockets (no encryption, no protocol), the ceiling of any round
 *   trip from JS to JS on this machine; Deno QUIC's ratio to it is printed.
 *
 * Medians of 5 runs, each run interleaved with its anchor. Ratios are ours ÷
 * Deno's (> 1 means KNUL is faster).
 *
 * Run: `deno task bench:transport` (needs `--unstable-net`, which the task passes).
 *
 * @module
 */

import { Kernel, type Link } from "../mod.ts";
import { libraryPath, median, ratio, report } from "./_harness.ts";
import {
  quicBulk,
  quicRoundTrips,
  tcpFramedPackets,
  udpRoundTrips,
} from "./_transport_baselines.ts";

const RUNS = 5;
const PACKETS = 1_000_000;
const ROUND_TRIPS = 10_000;
const BULK_BYTES = 256 << 20;
const MIB = 1 << 20;

const server = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
const client = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
const { cert, key } = server.transport.createDevCertificate();
const listener = await server.transport.listen({ cert, key, maxPacketBytes: MIB });

async function linkPair(): Promise<[Link, Link]> {
  const connecting = client.transport.connect({
    hostname: "127.0.0.1",
    port: listener.addr.port,
    serverName: "localhost",
    caCerts: [cert],
    maxPacketBytes: MIB,
  });
  const peer = (await listener.accept())!;
  return [await connecting, peer];
}

/** Packets/s of `count` packets of `size` bytes, measured until the last one reached JS. */
async function packetRate(count: number, size: number): Promise<number> {
  const [link, peer] = await linkPair();
  const payload = new Uint8Array(size).fill(7);
  const start = performance.now();
  const receiving = (async () => {
    let received = 0;
    for await (const packet of peer) {
      if (packet.length !== size) throw new Error("wrong packet size");
      if (++received === count) break;
    }
  })();
  for (let sent = 0; sent < count; sent++) {
    if (!link.trySend(payload)) await link.send(payload);
  }
  await receiving;
  const seconds = (performance.now() - start) / 1000;
  await Promise.all([link.close(), peer.close()]);
  return count / seconds;
}

/** Round trips/s: send 64 B, the peer echoes it, receive it. */
async function roundTripRate(count: number): Promise<number> {
  const [link, peer] = await linkPair();
  const payload = new Uint8Array(64).fill(1);
  const echo = (async () => {
    for await (const packet of peer) await peer.send(packet.data);
  })();
  await link.send(payload); // first round trip untimed (warms the path)
  await link.receive();
  const start = performance.now();
  for (let round = 0; round < count; round++) {
    await link.send(payload);
    const packet = await link.receive();
    if (packet === null || packet.length !== 64) throw new Error("echo lost");
  }
  const seconds = (performance.now() - start) / 1000;
  await link.close();
  await echo;
  await peer.close();
  return count / seconds;
}

/** One-way latencies (µs) of `count` 64 B packets sent one at a time. */
async function oneWayLatencies(count: number): Promise<number[]> {
  const [link, peer] = await linkPair();
  const payload = new Uint8Array(64).fill(3);
  const latencies: number[] = [];
  for (let index = 0; index < count; index++) {
    const sentAt = performance.now();
    if (!link.trySend(payload)) await link.send(payload);
    const packet = await peer.receive();
    if (packet === null) throw new Error("packet lost");
    latencies.push((performance.now() - sentAt) * 1000);
  }
  await Promise.all([link.close(), peer.close()]);
  return latencies;
}

function percentile(values: number[], fraction: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * fraction))];
}

const results: Record<string, number[]> = {
  packets: [],
  tcpPackets: [],
  roundTrips: [],
  quicRoundTrips: [],
  udpRoundTrips: [],
  oneWayP50: [],
  oneWayP99: [],
  bulk: [],
  quicBulk: [],
};
for (let run = 0; run < RUNS; run++) {
  results.packets.push(await packetRate(PACKETS, 64));
  results.tcpPackets.push(
    (await tcpFramedPackets({ packets: PACKETS, size: 64 })).packetsPerSecond,
  );
  results.roundTrips.push(await roundTripRate(ROUND_TRIPS));
  results.quicRoundTrips.push(
    (await quicRoundTrips({ cert, key, roundTrips: ROUND_TRIPS, size: 64 })).roundTripsPerSecond,
  );
  results.udpRoundTrips.push(
    (await udpRoundTrips({ roundTrips: ROUND_TRIPS, size: 64 })).roundTripsPerSecond,
  );
  const oneWay = await oneWayLatencies(ROUND_TRIPS);
  results.oneWayP50.push(percentile(oneWay, 0.5));
  results.oneWayP99.push(percentile(oneWay, 0.99));
  results.bulk.push((await packetRate(BULK_BYTES / MIB, MIB)) * MIB / 1e6);
  results.quicBulk.push(
    (await quicBulk({ cert, key, bytes: BULK_BYTES, chunkBytes: MIB })).megabytesPerSecond,
  );
}
const m = Object.fromEntries(Object.entries(results).map(([name, rates]) => [name, median(rates)]));

report("knul_64b_packets", m.packets, "packets/s");
report("deno_tcp_framed_64b_packets", m.tcpPackets, "packets/s");
ratio("knul_vs_deno_tcp_64b_packets", m.packets, m.tcpPackets);
report("knul_64b_round_trips", m.roundTrips, "round-trips/s");
report("deno_quic_64b_round_trips", m.quicRoundTrips, "round-trips/s");
ratio("knul_vs_deno_quic_round_trips", m.roundTrips, m.quicRoundTrips);
report("deno_udp_64b_round_trips", m.udpRoundTrips, "round-trips/s");
ratio("deno_quic_vs_deno_udp_round_trips", m.quicRoundTrips, m.udpRoundTrips);
ratio("knul_vs_deno_udp_round_trips", m.roundTrips, m.udpRoundTrips);
report("knul_64b_one_way_p50", m.oneWayP50, "µs");
report("knul_64b_one_way_p99", m.oneWayP99, "µs");
ratio("knul_one_way_p50_vs_15us_goal", 15, m.oneWayP50);
report("knul_1mib_bulk", m.bulk, "MB/s");
report("deno_quic_1mib_bulk", m.quicBulk, "MB/s");
ratio("knul_vs_deno_quic_bulk", m.bulk, m.quicBulk);

listener.close();
await client.close();
await server.close();
