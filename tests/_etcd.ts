/**
 * A real etcd cluster for tests and benchmarks: members of Debian's
 * `etcd-server` started on 127.0.0.1 with free ports and temporary data
 * dirs, killed and restarted on demand, removed on dispose.
 *
 * @module
 */

/** Free TCP ports on 127.0.0.1 (each bound once, then released). */
function freePorts(count: number): number[] {
  const listeners = Array.from(
    { length: count },
    () => Deno.listen({ hostname: "127.0.0.1", port: 0 }),
  );
  const ports = listeners.map((listener) => (listener.addr as Deno.NetAddr).port);
  for (const listener of listeners) listener.close();
  return ports;
}

/**
 * True when `etcd` and `etcdctl` are installed. Cluster tests are skipped
 * without them, except where `KREPIS_REQUIRE_ETCD=1` (`.ci/run` sets it):
 * there a missing etcd fails the tests instead of hiding them.
 */
export function etcdAvailable(): boolean {
  if (Deno.env.get("KREPIS_REQUIRE_ETCD") === "1") return true;
  for (const [tool, flag] of [["etcd", "--version"], ["etcdctl", "version"]]) {
    try {
      const { success } = new Deno.Command(tool, {
        args: [flag],
        stdout: "null",
        stderr: "null",
      })
        .outputSync();
      if (!success) return false;
    } catch {
      return false;
    }
  }
  return true;
}

interface Member {
  name: string;
  clientPort: number;
  peerPort: number;
  dataDir: string;
  process: Deno.ChildProcess | null;
}

/** Options of {@linkcode EtcdCluster.start}. */
export interface EtcdClusterOptions {
  /** Members (default 3). */
  members?: number;
  /** Extra flags for every member (e.g. `--max-txn-ops=…`). */
  flags?: string[];
}

/** A running etcd cluster on loopback. */
export class EtcdCluster implements AsyncDisposable {
  readonly #members: Member[];
  readonly #root: string;
  readonly #flags: string[];
  readonly #token = `krepis-${crypto.randomUUID()}`;

  private constructor(members: Member[], root: string, flags: string[]) {
    this.#members = members;
    this.#root = root;
    this.#flags = flags;
  }

  /** Starts a fresh cluster and waits until it has a leader and answers. */
  static async start(options: EtcdClusterOptions = {}): Promise<EtcdCluster> {
    const count = options.members ?? 3;
    const ports = freePorts(count * 2);
    const root = Deno.makeTempDirSync({ prefix: "krepis-etcd-" });
    const members = Array.from({ length: count }, (_, i) => ({
      name: `m${i}`,
      clientPort: ports[2 * i],
      peerPort: ports[2 * i + 1],
      dataDir: `${root}/m${i}`,
      process: null,
    }));
    const cluster = new EtcdCluster(members, root, options.flags ?? []);
    for (let i = 0; i < count; i++) cluster.#spawn(i, "new");
    await cluster.waitHealthy();
    return cluster;
  }

  /** `127.0.0.1:port` of every member's client URL. */
  get endpoints(): string[] {
    return this.#members.map((member) => `127.0.0.1:${member.clientPort}`);
  }

  #spawn(index: number, state: "new" | "existing"): void {
    const member = this.#members[index];
    const initial = this.#members
      .map((m) => `${m.name}=http://127.0.0.1:${m.peerPort}`)
      .join(",");
    member.process = new Deno.Command("etcd", {
      args: [
        `--name=${member.name}`,
        `--data-dir=${member.dataDir}`,
        `--listen-client-urls=http://127.0.0.1:${member.clientPort}`,
        `--advertise-client-urls=http://127.0.0.1:${member.clientPort}`,
        `--listen-peer-urls=http://127.0.0.1:${member.peerPort}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${member.peerPort}`,
        `--initial-cluster=${initial}`,
        `--initial-cluster-state=${state}`,
        `--initial-cluster-token=${this.#token}`,
        // Loopback on a loaded 2-core machine: quick elections, not flapping ones.
        "--heartbeat-interval=50",
        "--election-timeout=600",
        "--log-level=error",
        "--logger=zap",
        ...this.#flags,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  }

  /** SIGKILLs member `index` (its data dir stays) and waits for it to exit. */
  async kill(index: number): Promise<void> {
    const member = this.#members[index];
    if (member.process === null) return;
    member.process.kill("SIGKILL");
    await member.process.status;
    member.process = null;
  }

  /** Restarts a killed member on its data dir. */
  restart(index: number): void {
    if (this.#members[index].process !== null) return;
    this.#spawn(index, "existing");
  }

  /** Runs etcdctl against the live members; returns its stdout. */
  async etcdctl(...args: string[]): Promise<string> {
    const endpoints = this.#members
      .filter((member) => member.process !== null)
      .map((member) => `http://127.0.0.1:${member.clientPort}`);
    const output = await new Deno.Command("etcdctl", {
      args: [`--endpoints=${endpoints.join(",")}`, "--command-timeout=3s", ...args],
      env: { ETCDCTL_API: "3" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stdout);
    if (!output.success) {
      throw new Error(`etcdctl ${args.join(" ")}: ${new TextDecoder().decode(output.stderr)}`);
    }
    return text;
  }

  /** The cluster's current revision. */
  async revision(): Promise<number> {
    const status = JSON.parse(await this.etcdctl("endpoint", "status", "-w", "json"));
    return Math.max(
      ...status.map((s: { Status: { header: { revision: number } } }) => s.Status.header.revision),
    );
  }

  /** The index of the current leader. */
  async leader(): Promise<number> {
    const status: {
      Endpoint: string;
      Status: { header: { member_id: number }; leader: number };
    }[] = JSON.parse(await this.etcdctl("endpoint", "status", "-w", "json"));
    const leader = status.find((s) => s.Status.header.member_id === s.Status.leader);
    if (leader === undefined) throw new Error("the etcd cluster has no leader");
    return this.#members.findIndex((m) => leader.Endpoint.endsWith(`:${m.clientPort}`));
  }

  /** Waits (up to `timeoutMs`) until a write through the live members succeeds. */
  async waitHealthy(timeoutMs = 20_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < until) {
      try {
        await this.etcdctl("put", "/krepis-test-health", "ok");
        return;
      } catch (error) {
        last = error;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    throw new Error(`the etcd cluster did not become healthy: ${last}`);
  }

  /** Stops every member and removes the data dirs. */
  async [Symbol.asyncDispose](): Promise<void> {
    for (let i = 0; i < this.#members.length; i++) await this.kill(i);
    Deno.removeSync(this.#root, { recursive: true });
  }
}
