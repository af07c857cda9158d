import assert from "node:assert/strict";
import {
  artifactName,
  EXTENSIONS,
  parseManifest,
  PREFIXES,
  type ReleaseArch,
  type ReleaseOs,
  RUST_TARGETS,
  sha256Hex,
} from "../bindings/_artifact.ts";
import { packageArtifact, platformOfTarget } from "../release/build.ts";
import { collectManifest, sha256sums } from "../release/manifest.ts";
import { checkLockstep, compareVersions } from "../release/lockstep.ts";
import { type DownloadRequest, resolveLibraryPath } from "../bindings/_loader.ts";
import { VERSION } from "../bindings/_version.ts";
import { parseHeader } from "../tools/_header_to_symbols.ts";
import { libraryPath, tempDir } from "./_helpers.ts";

const root = new URL("../", import.meta.url);
const read = (relative: string) => Deno.readTextFileSync(new URL(relative, root));

/**
 * plug 1.1's file naming (download.ts `createDownloadURL`): default prefix
 * `lib` except on Windows, `suffixes` looked up by arch, default extension by OS.
 */
function plugFileName(request: DownloadRequest, os: ReleaseOs, arch: ReleaseArch): string {
  const prefix = os === "windows" ? "" : "lib";
  const extension = { linux: "so", darwin: "dylib", windows: "dll" }[os];
  return `${prefix}${request.name}${request.suffixes[arch]}.${extension}`;
}

Deno.test("artifact names: build script == loader request == plug's naming, every target", async () => {
  using cache = tempDir();
  for (const [pair, target] of Object.entries(RUST_TARGETS)) {
    const [os, arch] = pair.split("-") as [ReleaseOs, ReleaseArch];
    assert.deepEqual(platformOfTarget(target), { os, arch });
    const built = artifactName(os, arch);
    let requested: string | undefined;
    await resolveLibraryPath({ cacheDir: cache.path }, {
      os,
      arch,
      env: () => undefined,
      manifest: { version: VERSION, artifacts: { [built]: { sha256: "0".repeat(64), size: 1 } } },
      downloader: (request) => {
        requested = plugFileName(request, os, arch);
        throw new Error("stop after the request");
      },
    }).catch(() => {});
    assert.equal(requested, built, pair);
    assert.ok(built.startsWith(PREFIXES[os]) && built.endsWith(`.${EXTENSIONS[os]}`));
  }
  const names = Object.keys(RUST_TARGETS).map((pair) => {
    const [os, arch] = pair.split("-") as [ReleaseOs, ReleaseArch];
    return artifactName(os, arch);
  });
  assert.equal(new Set(names).size, names.length, "names are unique");
  assert.throws(() => platformOfTarget("riscv64gc-unknown-linux-gnu"), /not a released target/);
});

Deno.test("packaged artifact → manifest round trip → the loader verifies it", async () => {
  using dist = tempDir();
  using cache = tempDir();
  const target = RUST_TARGETS["linux-x86_64"];
  const artifact = await packageArtifact(libraryPath(), target, dist.path);
  assert.equal(artifact.name, "libkrepis-x86_64.so");
  assert.equal(
    Deno.readTextFileSync(`${dist.path}/${artifact.name}.sha256`),
    `${artifact.sha256}  ${artifact.name}\n`,
  );
  const manifest = await collectManifest(dist.path, VERSION);
  assert.deepEqual(parseManifest(JSON.parse(JSON.stringify(manifest))), manifest);
  assert.equal(manifest.artifacts[artifact.name].sha256, artifact.sha256);
  assert.equal(sha256sums(manifest), `${artifact.sha256}  ${artifact.name}\n`);

  const path = await resolveLibraryPath({ cacheDir: `${cache.path}/krepis` }, {
    os: "linux",
    arch: "x86_64",
    env: () => undefined,
    manifest,
    downloader: (request) => {
      const file = `${cache.path}/${request.name}${request.suffixes.x86_64}.so`;
      Deno.copyFileSync(`${dist.path}/${artifact.name}`, file);
      return Promise.resolve(file);
    },
  });
  assert.equal(await sha256Hex(Deno.readFileSync(path)), artifact.sha256);

  // A checksum file that lies is refused when the manifest is assembled.
  Deno.writeTextFileSync(`${dist.path}/${artifact.name}.sha256`, `${"0".repeat(64)}  x\n`);
  await assert.rejects(collectManifest(dist.path, VERSION), /does not match/);
});

Deno.test("manifest validation names the bad field", () => {
  assert.throws(() => parseManifest(null), /object/);
  assert.throws(() => parseManifest({ version: 1, artifacts: {} }), /version/);
  assert.throws(
    () => parseManifest({ version: "0.1.0", artifacts: { a: { sha256: "xyz", size: 1 } } }),
    /artifacts\["a"\]\.sha256/,
  );
  assert.throws(
    () =>
      parseManifest({ version: "0.1.0", artifacts: { a: { sha256: "a".repeat(64), size: 0 } } }),
    /size/,
  );
});

Deno.test("lock-step: the checkout is in step, and each drifted site is named", () => {
  assert.deepEqual(checkLockstep(read), []);
  const drift = (file: string, edit: (text: string) => string) => (relative: string) =>
    relative === file ? edit(read(relative)) : read(relative);
  const v = VERSION.replaceAll(".", "\\.");
  assert.match(
    checkLockstep(
      drift("deno.json", (t) => t.replace(new RegExp(`"version": "${v}"`), '"version": "9.9.9"')),
    )
      .join(),
    /deno\.json version is 9\.9\.9/,
  );
  assert.match(
    checkLockstep(drift("bindings/_version.ts", (t) => t.replace(VERSION, "0.0.1"))).join(),
    /bindings\/_version\.ts VERSION is 0\.0\.1/,
  );
  assert.match(
    checkLockstep(drift("CHANGELOG.md", (t) => t.replace("## [Unreleased]", "## Next"))).join(),
    /Unreleased/,
  );
  assert.match(
    checkLockstep(drift("CHANGELOG.md", (t) => `${t}\n## [99.0.0] - 2030-01-01\n`)).join(),
    /99\.0\.0, newer than/,
  );
  assert.ok(compareVersions("1.0.0-rc.1", "1.0.0") < 0);
  assert.ok(compareVersions("1.10.0", "1.9.9") > 0);
});

Deno.test("codegen refuses boundary types the rules forbid", () => {
  const ok = "int32_t krepis_a(uint32_t h, uint8_t *out, uint32_t cap);\n";
  assert.deepEqual(parseHeader(ok)[0].parameters, ["u32", "buffer", "u32"]);
  assert.throws(() => parseHeader("const char *krepis_b(void);\n"), /result type/);
  assert.throws(() => parseHeader("int32_t krepis_c(struct Foo f);\n"), /parameter type/);
  assert.throws(() => parseHeader("int32_t krepis_d(size_t n);\n"), /parameter type "size_t"/);
  assert.throws(() => parseHeader("/* nothing */\n"), /no krepis_/);
  const callback = "typedef void (*KREPIS_Cb)(uint32_t a, uint32_t b);\n" +
    "int32_t krepis_cb(KREPIS_Cb callback,\n                  uint32_t count);\n";
  assert.deepEqual(parseHeader(callback)[0].parameters, ["function", "u32"]);
  const doc = "// Waits. [nonblocking]\nint32_t krepis_wait(uint32_t h);\n";
  assert.equal(parseHeader(doc)[0].nonblocking, true);
});

Deno.test("cargo-release replacements move every version site together", async () => {
  const { parse } = await import("smol-toml");
  using copy = tempDir();
  const files = [
    "Cargo.toml",
    "Cargo.lock",
    "deno.json",
    "bindings/_version.ts",
    "release/manifest.json",
    "README.md",
    "CHANGELOG.md",
  ];
  for (const file of files) {
    Deno.mkdirSync(`${copy.path}/${file}`.replace(/\/[^/]+$/, ""), { recursive: true });
    Deno.writeTextFileSync(`${copy.path}/${file}`, read(file));
  }
  Deno.mkdirSync(`${copy.path}/ffi`);
  const next = "0.2.0";
  const date = "2026-12-01";
  // What cargo-release itself edits: the workspace version (and the lock file).
  const cargoToml = `${copy.path}/Cargo.toml`;
  Deno.writeTextFileSync(
    cargoToml,
    read("Cargo.toml").replace(
      /(\[workspace\.package\][^[]*?^version\s*=\s*)"[^"]+"/ms,
      `$1"${next}"`,
    ),
  );
  Deno.writeTextFileSync(
    `${copy.path}/Cargo.lock`,
    read("Cargo.lock").replaceAll(
      new RegExp(`(name = "krepis(?:-abi-header)?"\\nversion = )"${VERSION}"`, "g"),
      `$1"${next}"`,
    ),
  );
  // What ffi/release.toml tells it to edit, applied the way it does.
  const config = parse(read("ffi/release.toml")) as {
    "pre-release-replacements": {
      file: string;
      search: string;
      replace: string;
      exactly?: number;
      min?: number;
    }[];
  };
  for (const rule of config["pre-release-replacements"]) {
    const path = `${copy.path}/ffi/${rule.file}`;
    const text = Deno.readTextFileSync(path);
    const matches = text.match(new RegExp(rule.search, "g"))?.length ?? 0;
    if (rule.exactly !== undefined) {
      assert.equal(matches, rule.exactly, `${rule.file}: ${rule.search}`);
    }
    if (rule.min !== undefined) assert.ok(matches >= rule.min, `${rule.file}: ${rule.search}`);
    const replacement = rule.replace.replaceAll("{{version}}", next).replaceAll("{{date}}", date);
    Deno.writeTextFileSync(path, text.replace(new RegExp(rule.search, "g"), () => replacement));
  }
  const readCopy = (relative: string) => Deno.readTextFileSync(`${copy.path}/${relative}`);
  assert.deepEqual(checkLockstep(readCopy), [], "the bumped copy is in lock-step");
  assert.equal(JSON.parse(readCopy("deno.json")).version, next);
  assert.match(readCopy("bindings/_version.ts"), new RegExp(`VERSION = "${next}"`));
  assert.equal(JSON.parse(readCopy("release/manifest.json")).version, next);
  assert.match(readCopy("README.md"), new RegExp(`jsr:@krepis/sdk@${next}`));
  assert.match(
    readCopy("CHANGELOG.md"),
    new RegExp(`## \\[Unreleased\\]\\n\\n## \\[${next}\\] - ${date}`),
  );
  // Forgetting one site is caught by the lock-step check.
  Deno.writeTextFileSync(`${copy.path}/bindings/_version.ts`, read("bindings/_version.ts"));
  assert.match(checkLockstep(readCopy).join(), /bindings\/_version\.ts VERSION is/);
});
