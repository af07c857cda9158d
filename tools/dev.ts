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
 *
 * `CARGO_TARGET_DIR` is honoured (CI keeps a warm one outside the clone).
 *
 * @module
 */

const root = new URL("../", import.meta.url);
const rootPath = decodeURIComponent(root.pathname).replace(/^\/([A-Za-z]:)/, "$1");

async function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<void> {
  const { code } = await new Deno.Command(cmd, { args, cwd: rootPath, env }).spawn().status;
  if (code !== 0) {
    console.error(`dev: \`${cmd} ${args.join(" ")}\` failed (exit ${code})`);
    Deno.exit(code);
  }
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
  if (!output.success) {
    console.error("dev: building the kernel failed");
    Deno.exit(output.code);
  }
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

const DENO_RUN_FLAGS = ["--allow-ffi", "--allow-read", "--allow-write", "--allow-env"];

if (import.meta.main) {
  const [command = "test", ...rest] = Deno.args;
  switch (command) {
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
      await run(Deno.execPath(), ["test", "--allow-all", "--v8-flags=--expose-gc", ...rest], {
        KREPIS_LIBRARY_PATH: library,
      });
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
        await run(Deno.execPath(), ["run", "--allow-all", `bench/${name}.ts`], {
          KREPIS_LIBRARY_PATH: library,
        });
      }
      break;
    }
    default:
      console.error(`dev: unknown command ${command}`);
      Deno.exit(2);
  }
}
