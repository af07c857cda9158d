/**
 * Contributor entry points behind the deno tasks. Builds the kernel when
 * needed (cargo decides), then runs things against that local build through
 * `KREPIS_LIBRARY_PATH`:
 *
 *   deno task build            build ffi/ (debug) and print the library path
 *   deno task example          build, then run examples/main.ts
 *   deno task test             cargo test, build, deno test (everything)
 *   deno task test:deno        build, deno test only
 *   deno task bench [name]     build (release), run bench/<name>.ts or all
 *   deno task dev [example]    watch ffi/ and the TypeScript: on a Rust change
 *                              regenerate + rebuild incrementally, then re-run
 *                              the tests (or the example) on every change
 *
 * `CARGO_TARGET_DIR` is honoured (CI keeps a warm one outside the clone).
 *
 * @module
 */

const root = new URL("../", import.meta.url);
const rootPath = decodeURIComponent(root.pathname).replace(/^\/([A-Za-z]:)/, "$1");

class ExitError extends Error {
  constructor(message: string, readonly code: number) {
    super(message);
  }
}

async function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<void> {
  const { code } = await new Deno.Command(cmd, { args, cwd: rootPath, env }).spawn().status;
  if (code !== 0) {
    throw new ExitError(`dev: \`${cmd} ${args.join(" ")}\` failed (exit ${code})`, code);
  }
}

/** The test files whose tests each run in a process of their own. */
function isolatedTestFiles(): string[] {
  return [...Deno.readDirSync(`${rootPath}/tests`)]
    .filter((entry) => entry.name.endsWith("_isolated_test.ts"))
    .map((entry) => `tests/${entry.name}`)
    .sort();
}

/** The names of the `Deno.test({ name: "..." })` declarations in `file`. */
function testNames(file: string): string[] {
  const source = Deno.readTextFileSync(`${rootPath}/${file}`);
  return [...source.matchAll(/Deno\.test\(\{\s*name: "([^"]+)"/g)].map((match) => match[1]);
}

/** Builds the kernel and returns the path cargo reports for the cdylib. */
export async function buildLibrary(release: boolean): Promise<string> {
  const args = ["build", "-p", "krepis", "--message-format=json-render-diagnostics"];
  if (release) args.push("--release");
  const child = new Deno.Command("cargo", {
    args,
    cwd: rootPath,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const output = await child.output();
  if (!output.success) throw new Error("dev: building the kernel failed");
  const extension = { linux: ".so", darwin: ".dylib", windows: ".dll" }[Deno.build.os as string] ??
    ".so";
  for (const line of new TextDecoder().decode(output.stdout).split("\n")) {
    if (!line.includes('"compiler-artifact"')) continue;
    const message = JSON.parse(line);
    if (message.target?.name !== "krepis") continue;
    const file = (message.filenames as string[]).find((name) => name.endsWith(extension));
    if (file) return file;
  }
  throw new Error("dev: cargo did not report the krepis cdylib");
}

/** Watches sources; re-runs `mode` (tests or the example) on every change. */
async function watch(mode: "test" | "example"): Promise<never> {
  let child: Deno.ChildProcess | undefined;
  let library = "";
  const cycle = async (rustChanged: boolean) => {
    if (child !== undefined) {
      // Never rebuild under a running process: overwriting a loaded library crashes it.
      try {
        child.kill("SIGTERM");
      } catch { /* already exited */ }
      await child.status;
      child = undefined;
    }
    try {
      if (rustChanged || library === "") {
        await run(Deno.execPath(), ["run", "-A", "tools/codegen.ts"]);
        library = await buildLibrary(false);
      }
    } catch (error) {
      console.error(`${(error as Error).message}; waiting for the next change`);
      return;
    }
    const args = mode === "test"
      ? ["test", "--allow-all", "--unstable-net", "--v8-flags=--expose-gc"]
      : ["run", ...DENO_RUN_FLAGS, "examples/main.ts"];
    child = new Deno.Command(Deno.execPath(), {
      args,
      cwd: rootPath,
      env: { KREPIS_LIBRARY_PATH: library },
    }).spawn();
  };
  await cycle(true);
  const watcher = Deno.watchFs(
    [
      "ffi/src",
      "ffi/proto",
      "ffi/build.rs",
      "ffi/Cargo.toml",
      "bindings",
      "release",
      "tests",
      "examples",
      "mod.ts",
    ].map((path) => `${rootPath}/${path}`),
    { recursive: true },
  );
  let timer: ReturnType<typeof setTimeout> | undefined;
  let rustChanged = false;
  for await (const event of watcher) {
    // Windows reports backslashes.
    const relevant = event.paths
      .map((path) => path.replaceAll("\\", "/"))
      .filter((path) => !path.includes("/_gen/"));
    if (relevant.length === 0) continue;
    rustChanged ||= relevant.some((path) => path.includes("/ffi/"));
    clearTimeout(timer);
    timer = setTimeout(() => {
      const rebuild = rustChanged;
      rustChanged = false;
      console.log(`\ndev: change detected${rebuild ? " in ffi/, rebuilding" : ""}`);
      void cycle(rebuild);
    }, 200);
  }
  throw new Error("dev: the file watcher stopped");
}

const DENO_RUN_FLAGS = [
  "--allow-ffi",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  `--allow-run=${Deno.execPath()}`,
  "--allow-net=127.0.0.1",
];

async function main(command: string, rest: string[]): Promise<void> {
  switch (command) {
    case "dev": {
      await watch(rest[0] === "example" ? "example" : "test");
      break;
    }
    case "build": {
      console.log(await buildLibrary(rest.includes("--release")));
      break;
    }
    case "example": {
      const library = await buildLibrary(false);
      await run(Deno.execPath(), ["run", ...DENO_RUN_FLAGS, "examples/main.ts", ...rest], {
        KREPIS_LIBRARY_PATH: library,
      });
      break;
    }
    case "test":
      await run("cargo", ["test", "--workspace", "--quiet"]);
    // falls through
    case "test-deno": {
      const library = await buildLibrary(false);
      const testArgs = ["test", "--allow-all", "--unstable-net", "--v8-flags=--expose-gc"];
      const env = { KREPIS_LIBRARY_PATH: library };
      // Files named *_isolated_test.ts run each of their tests in a process
      // of its own (after the rest): a fault they inject can leave a native
      // thread stuck for the life of the process (sled's flush after a full
      // disk), and it must not take the tests after it down with it.
      const isolated = rest.length > 0 ? [] : isolatedTestFiles();
      await run(Deno.execPath(), [
        ...testArgs,
        ...isolated.map((file) => `--ignore=${file}`),
        ...rest,
      ], env);
      for (const file of isolated) {
        for (const name of testNames(file)) {
          await run(Deno.execPath(), [...testArgs, `--filter=${name}`, file], env);
        }
      }
      break;
    }
    case "bench": {
      const library = await buildLibrary(true);
      const names = rest.length > 0 ? rest : [...Deno.readDirSync(`${rootPath}/bench`)]
        .filter((entry) => entry.name.endsWith(".ts") && !entry.name.startsWith("_"))
        .map((entry) => entry.name.replace(/\.ts$/, ""))
        .sort();
      for (const name of names) {
        console.log(`# bench/${name}`);
        await run(Deno.execPath(), [
          "run",
          "--allow-all",
          "--unstable-kv",
          "--unstable-net",
          `bench/${name}.ts`,
        ], {
          KREPIS_LIBRARY_PATH: library,
        });
      }
      break;
    }
    default:
      throw new ExitError(`dev: unknown command ${command}`, 2);
  }
}

if (import.meta.main) {
  const [command = "test", ...rest] = Deno.args;
  try {
    await main(command, rest);
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(error instanceof ExitError ? error.code : 1);
  }
}
