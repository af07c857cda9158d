/**
 * Test helpers. Tests run against the real kernel library named by
 * `KREPIS_LIBRARY_PATH` (set by `deno task test`).
 *
 * @module
 */

/** The file-system path of a test fixture (portable: no `/C:/` on Windows). */
export function fixture(name: string): string {
  const url = new URL(`./fixtures/${name}`, import.meta.url);
  return decodeURIComponent(url.pathname).replace(/^\/([A-Za-z]:)/, "$1");
}

/** Path of the locally built kernel library. */
export function libraryPath(): string {
  const path = Deno.env.get("KREPIS_LIBRARY_PATH");
  if (!path) {
    throw new Error(
      "KREPIS_LIBRARY_PATH is not set: run the tests with `deno task test`, which builds the kernel",
    );
  }
  return path;
}

/** A temporary directory removed by `using`. */
export function tempDir(prefix = "krepis-test-"): { path: string } & Disposable {
  const path = Deno.makeTempDirSync({ prefix });
  return {
    path,
    [Symbol.dispose]() {
      Deno.removeSync(path, { recursive: true });
    },
  };
}

/** Replaces every occurrence of `from` by `to` (same length) in `bytes`; returns the count. */
export function patchBytes(bytes: Uint8Array, from: string, to: string): number {
  const needle = new TextEncoder().encode(from);
  const replacement = new TextEncoder().encode(to);
  if (needle.length !== replacement.length) throw new Error("patch must keep the length");
  let count = 0;
  outer: for (let i = 0; i <= bytes.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) {
      if (bytes[i + j] !== needle[j]) continue outer;
    }
    bytes.set(replacement, i);
    count++;
  }
  return count;
}

/** Result printed by tests/fixtures/open_kernel.ts. */
export interface ChildOutcome {
  ok: boolean;
  name?: string;
  code?: string;
  message?: string;
}

/** Runs tests/fixtures/open_kernel.ts in a child Deno with exactly `flags`. */
export async function openInChild(
  flags: string[],
  options: Record<string, unknown>,
  env: Record<string, string> = {},
): Promise<ChildOutcome & { status: number; stderr: string }> {
  const script = fixture("open_kernel.ts");
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...flags, script, JSON.stringify(options)],
    env: { KREPIS_LIBRARY_PATH: libraryPath(), ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(output.stdout).trim();
  const stderr = new TextDecoder().decode(output.stderr);
  const last = stdout.split("\n").at(-1) ?? "";
  let outcome: ChildOutcome;
  try {
    outcome = JSON.parse(last);
  } catch {
    throw new Error(`child printed no outcome (exit ${output.code}):\n${stdout}\n${stderr}`);
  }
  return { ...outcome, status: output.code, stderr };
}

/**
 * Writes a (patched) copy of the kernel library. On macOS the ad-hoc code
 * signature no longer matches after patching, so the copy is re-signed.
 */
export async function writeLibraryCopy(path: string, bytes: Uint8Array): Promise<void> {
  Deno.writeFileSync(path, bytes);
  if (Deno.build.os === "darwin") {
    const { code } = await new Deno.Command("codesign", { args: ["-f", "-s", "-", path] })
      .output();
    if (code !== 0) throw new Error(`codesign failed for ${path}`);
  }
}

/**
 * The names of this process's threads (Linux, from `/proc/self/task`); a
 * thread that exits while they are read (Deno's idle pool threads do) reads
 * as "".
 */
export function threadNames(): string[] {
  return [...Deno.readDirSync("/proc/self/task")].map((task) => {
    try {
      return Deno.readTextFileSync(`/proc/self/task/${task.name}/comm`).trim();
    } catch {
      return "";
    }
  });
}

/**
 * The thread names that `matches` selects, once none are left or after
 * `timeoutMs`. A joined thread can still show in `/proc/self/task` for a
 * moment: `pthread_join` returns when the exiting thread clears its tid, a
 * little before the OS removes the task.
 */
export async function threadsLeft(
  matches: (name: string) => boolean,
  timeoutMs = 1000,
): Promise<string[]> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const left = threadNames().filter(matches);
    if (left.length === 0 || performance.now() > deadline) return left;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
