/**
 * `deno task codegen` — regenerates everything derived from the Rust side:
 *
 * 1. `ffi/include/krepis.h` (cbindgen, via `cargo run -p krepis-abi-header`),
 * 2. `bindings/_gen/symbols.ts`: the `Deno.dlopen` symbol table parsed from
 *    that header, plus its ABI hash; and from `ffi/include/krepis_diagnostics.h`
 *    (the test/benchmark exports, outside the ABI) the table only tests and
 *    benches open, `bindings/_gen/diagnostics_symbols.ts`,
 * 3. `bindings/_gen/proto/**`: ts-proto output for `ffi/proto/**`.
 *
 * `deno task codegen --check` generates into memory and fails, listing the
 * stale files, when anything on disk differs (used by `deno task check`).
 * The output is deterministic: no timestamps, no tool versions.
 *
 * @module
 */

import { abiHash, diagnosticsModule, symbolsModule } from "./_header_to_symbols.ts";

const root = new URL("../", import.meta.url);
const check = Deno.args.includes("--check");
const stale: string[] = [];

function path(relative: string): string {
  return new URL(relative, root).pathname.replace(/^\/([A-Za-z]:)/, "$1");
}

async function run(cmd: string, args: string[], cwd = path(".")): Promise<void> {
  const { code, stderr } = await new Deno.Command(cmd, {
    args,
    cwd,
    stdout: "inherit",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (exit ${code}):\n${new TextDecoder().decode(stderr)}`,
    );
  }
}

async function readOrNull(file: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(file);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

/** Writes `text` to `relative`, or in check mode records it as stale. */
async function emit(relative: string, text: string): Promise<void> {
  const file = path(relative);
  const current = await readOrNull(file);
  if (current?.replaceAll("\r", "") === text) return;
  if (check) {
    stale.push(relative);
    return;
  }
  await Deno.mkdir(file.slice(0, file.lastIndexOf("/")), { recursive: true });
  await Deno.writeTextFile(file, text);
  console.log(`codegen: wrote ${relative}`);
}

const temp = await Deno.makeTempDir({ prefix: "krepis-codegen-" });
try {
  // 1. The header, from the Rust exports.
  await run("cargo", [
    "run",
    "--quiet",
    "-p",
    "krepis-abi-header",
    "--",
    `${temp}/krepis.h`,
    `${temp}/krepis_diagnostics.h`,
  ]);
  const header = (await Deno.readTextFile(`${temp}/krepis.h`)).replaceAll("\r", "");
  await emit("ffi/include/krepis.h", header);
  const diagnostics = (await Deno.readTextFile(`${temp}/krepis_diagnostics.h`))
    .replaceAll("\r", "");
  await emit("ffi/include/krepis_diagnostics.h", diagnostics);

  // 2. The symbol tables (and the ABI hash), from the headers.
  await emit(
    "bindings/_gen/symbols.ts",
    symbolsModule(header, await abiHash(header)),
  );
  await emit("bindings/_gen/diagnostics_symbols.ts", diagnosticsModule(diagnostics));

  // 3. The control-plane types, from the .proto files.
  // On Windows npm installs .cmd shims, which Deno only runs through cmd.
  const windows = Deno.build.os === "windows";
  const plugin = path(
    `tools/proto/node_modules/.bin/protoc-gen-ts_proto${windows ? ".cmd" : ""}`,
  );
  try {
    await Deno.stat(plugin);
  } catch {
    const npm = ["ci", "--no-audit", "--no-fund", "--silent"];
    if (windows) await run("cmd", ["/d", "/c", "npm", ...npm], path("tools/proto"));
    else await run("npm", npm, path("tools/proto"));
  }
  const protoDir = path("ffi/proto/krepis/v1");
  const protos = [...Deno.readDirSync(protoDir)]
    .filter((entry) => entry.name.endsWith(".proto"))
    .map((entry) => entry.name)
    .sort();
  await Deno.mkdir(`${temp}/ts`);
  await run("protoc", [
    `--plugin=protoc-gen-ts_proto=${plugin}`,
    `--ts_proto_out=${temp}/ts`,
    "--ts_proto_opt=importSuffix=.ts,forceLong=bigint,outputJsonMethods=false," +
    "outputPartialMethods=false,esModuleInterop=true,outputServices=false,env=browser",
    `-I${path("ffi/proto")}`,
    ...protos.map((name) => `${protoDir}/${name}`),
  ]);
  for (const name of protos) {
    const ts = name.replace(/\.proto$/, ".ts");
    const generated = await Deno.readTextFile(`${temp}/ts/krepis/v1/${ts}`);
    // Tool versions differ between machines; keep the output reproducible.
    const text = "// deno-lint-ignore-file\n" +
      generated.replace(/\/\/ versions:\n(\/\/ .*\n)*?\/\/ source:/, "// source:");
    await emit(`bindings/_gen/proto/krepis/v1/${ts}`, text);
  }
} finally {
  await Deno.remove(temp, { recursive: true });
}

if (stale.length > 0) {
  console.error(
    `codegen: stale generated files (run \`deno task codegen\`):\n  ${stale.join("\n  ")}`,
  );
  Deno.exit(1);
} else if (check) {
  console.log("codegen: header, symbols and proto bindings are fresh");
}
