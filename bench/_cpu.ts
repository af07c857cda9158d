/**
 * CPU accounting and pinning for server benchmarks (Linux): on a machine
 * with few cores, requests per second mostly measure the load generator,
 * while the server's CPU time per request holds on any machine. So servers
 * are measured pinned to one core with the load generator on another, and
 * their CPU is read per thread from `/proc/<pid>/task/<tid>/stat`
 * (utime + stime).
 *
 * @module
 */

/** Clock ticks per second of `/proc/.../stat` times (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

/** CPU time of every thread of some processes, in microseconds. */
export interface CpuSnapshot {
  /** `pid/tid` → µs of user + system time. */
  threads: Map<string, number>;
}

/** True when pinning and per-thread CPU can be measured here. */
export function cpuAccountingAvailable(): boolean {
  if (Deno.build.os !== "linux") return false;
  try {
    Deno.statSync(`/proc/${Deno.pid}/task`);
    return new Deno.Command("taskset", { args: ["-V"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/** The number of CPUs this process may run on. */
export function cpuCount(): number {
  return navigator.hardwareConcurrency;
}

function threadCpuUs(pid: number, tid: string): number | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
    // Fields after the command name (which may contain spaces): state is [0],
    // utime [11], stime [12].
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / TICKS_PER_SECOND;
  } catch {
    return undefined; // the thread exited
  }
}

/** `pid` and every descendant process (nginx's workers, say). */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry.name));
      children.set(ppid, list);
    } catch { /* gone */ }
  }
  const tree = [pid];
  for (let index = 0; index < tree.length; index++) {
    tree.push(...(children.get(tree[index]) ?? []));
  }
  return tree;
}

/** CPU time of every thread of `pids` now. */
export function snapshot(pids: number[]): CpuSnapshot {
  const threads = new Map<string, number>();
  for (const pid of pids) {
    let tids: string[];
    try {
      tids = [...Deno.readDirSync(`/proc/${pid}/task`)].map((entry) => entry.name);
    } catch {
      continue;
    }
    for (const tid of tids) {
      const us = threadCpuUs(pid, tid);
      if (us !== undefined) threads.set(`${pid}/${tid}`, us);
    }
  }
  return { threads };
}

/** CPU spent between two snapshots: in all, and by the main thread of `mainPid`. */
export function spent(
  before: CpuSnapshot,
  after: CpuSnapshot,
  mainPid: number,
): { totalUs: number; mainThreadUs: number } {
  let totalUs = 0;
  let mainThreadUs = 0;
  for (const [key, us] of after.threads) {
    const delta = us - (before.threads.get(key) ?? 0);
    totalUs += delta;
    if (key === `${mainPid}/${mainPid}`) mainThreadUs += delta;
  }
  return { totalUs, mainThreadUs };
}

/** Pins every thread of `pids` (and threads they start later) to `cpus` (e.g. "0"). */
export async function pin(pids: number[], cpus: string): Promise<void> {
  for (const pid of pids) {
    const result = await new Deno.Command("taskset", {
      args: ["-a", "-p", "-c", cpus, String(pid)],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!result.success) {
      throw new Error(
        `taskset -a -p -c ${cpus} ${pid} failed: ${new TextDecoder().decode(result.stderr)}`,
      );
    }
  }
}
