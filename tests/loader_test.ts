import assert from "node:assert/strict";
import {
  AbiMismatchError,
  IntegrityError,
  Kernel,
  LoadError,
  PermissionError,
  VERSION,
} from "../mod.ts";
import { type DownloadRequest, openLibrary, resolveLibraryPath } from "../bindings/_loader.ts";
import { ABI_HASH } from "../bindings/_gen/symbols.ts";
import { artifactName, type Manifest, sha256Hex } from "../bindings/_artifact.ts";
import { libraryPath, openInChild, patchBytes, tempDir, writeLibraryCopy } from "./_helpers.ts";

const noEnv = (): undefined => undefined;
const NAME = artifactName("linux", "x86_64");

/** A downloader that serves `files` in turn from `<dir>/plug`, a cache written in place like plug's. */
function fakeDownloader(dir: string, files: Uint8Array[]) {
  const requests: DownloadRequest[] = [];
  Deno.mkdirSync(`${dir}/plug`, { recursive: true });
  const downloader = (request: DownloadRequest): Promise<string> => {
    requests.push(request);
    const bytes = files[Math.min(requests.length - 1, files.length - 1)];
    const path = `${dir}/plug/${request.name}${request.suffixes.x86_64}.so`;
    Deno.writeFileSync(path, bytes);
    return Promise.resolve(path);
  };
  return { downloader, requests };
}

async function manifestFor(bytes: Uint8Array<ArrayBuffer>): Promise<Manifest> {
  return {
    version: VERSION,
    artifacts: { [NAME]: { sha256: await sha256Hex(bytes), size: bytes.length } },
  };
}

const realLibrary = (): Uint8Array<ArrayBuffer> => Deno.readFileSync(libraryPath());

Deno.test("download: a verified artifact is returned from the release URL", async () => {
  using cache = tempDir();
  const bytes = realLibrary();
  const { downloader, requests } = fakeDownloader(cache.path, [bytes]);
  const manifest = await manifestFor(bytes);
  const path = await resolveLibraryPath(
    { downloadBaseUrl: "https://mirror.example/releases/", cacheDir: `${cache.path}/krepis` },
    { downloader, manifest, os: "linux", arch: "x86_64", env: noEnv },
  );
  assert.equal(requests.length, 1);
  // Installed at its content-addressed path, read-only; never plug's own file.
  const sha = manifest.artifacts[NAME].sha256;
  assert.equal(path, `${cache.path}/krepis/${VERSION}/libkrepis-x86_64-${sha}.so`);
  assert.equal(Deno.statSync(path).mode! & 0o222, 0, "the cached library is read-only");
  assert.deepEqual(
    [...Deno.readDirSync(`${cache.path}/krepis/${VERSION}`)].map((entry) => entry.name).sort(),
    [".lock", `libkrepis-x86_64-${sha}.so`, `libkrepis-x86_64-${sha}.so.verified`],
    "no temp file is left behind",
  );
  assert.equal(requests[0].url, `https://mirror.example/releases/${VERSION}/`);
  assert.equal(requests[0].name, "krepis");
  assert.equal(requests[0].cache, "use");
  assert.deepEqual(Deno.readFileSync(path), bytes);
});

Deno.test("download: a tampered artifact is discarded, refetched once, then refused", async () => {
  using cache = tempDir();
  const bytes = realLibrary();
  const tampered = bytes.slice();
  tampered[tampered.length >> 1] ^= 0xff;
  const { downloader, requests } = fakeDownloader(cache.path, [tampered, tampered]);
  await assert.rejects(
    resolveLibraryPath({ cacheDir: `${cache.path}/krepis` }, {
      downloader,
      manifest: await manifestFor(bytes),
      os: "linux",
      arch: "x86_64",
      env: noEnv,
    }),
    (error: unknown) => {
      assert.ok(error instanceof IntegrityError);
      assert.equal(error.code, "INTEGRITY");
      assert.match(error.message, new RegExp(`expected sha256 [0-9a-f]{64}`));
      assert.equal(error.details.artifact, NAME);
      return true;
    },
  );
  assert.equal(requests.length, 2, "exactly one refetch");
  assert.equal(requests[1].cache, "reloadAll");
  assert.deepEqual([...Deno.readDirSync(`${cache.path}/plug`)], [], "the bad download was deleted");
  assert.deepEqual(
    [...Deno.readDirSync(`${cache.path}/krepis/${VERSION}`)].map((entry) => entry.name),
    [".lock"],
    "nothing was installed",
  );
});

Deno.test("download: a torn cached file is healed by the one refetch", async () => {
  using cache = tempDir();
  const bytes = realLibrary();
  const torn = bytes.slice(0, 1000);
  const { downloader, requests } = fakeDownloader(cache.path, [torn, bytes]);
  const path = await resolveLibraryPath({ cacheDir: `${cache.path}/krepis` }, {
    downloader,
    manifest: await manifestFor(bytes),
    os: "linux",
    arch: "x86_64",
    env: noEnv,
  });
  assert.equal(requests.length, 2);
  assert.equal(await sha256Hex(Deno.readFileSync(path)), await sha256Hex(bytes));
});

Deno.test("download: no manifest entry for the platform is refused before any fetch", async () => {
  using cache = tempDir();
  const { downloader, requests } = fakeDownloader(cache.path, [realLibrary()]);
  await assert.rejects(
    resolveLibraryPath({}, {
      downloader,
      manifest: { version: VERSION, artifacts: {} },
      os: "darwin",
      arch: "aarch64",
      env: noEnv,
    }),
    /no checksum for libkrepis-aarch64\.dylib/,
  );
  assert.equal(requests.length, 0);
});

Deno.test("download: a failing downloader is a LoadError naming the URL", async () => {
  using cache = tempDir();
  const bytes = realLibrary();
  await assert.rejects(
    resolveLibraryPath({ downloadBaseUrl: "https://mirror.example", cacheDir: cache.path }, {
      downloader: () => Promise.reject(new Error("Could not find it")),
      manifest: await manifestFor(bytes),
      os: "linux",
      arch: "x86_64",
      env: noEnv,
    }),
    (error: unknown) => {
      assert.ok(error instanceof LoadError);
      assert.match(error.message, /mirror\.example\/0\.1\.0\/libkrepis/);
      return true;
    },
  );
});

Deno.test("a local libraryPath wins over downloading", async () => {
  const path = await resolveLibraryPath({ libraryPath: "/some/where/libkrepis.so" }, {
    downloader: () => Promise.reject(new Error("must not download")),
  });
  assert.equal(path, "/some/where/libkrepis.so");
});

Deno.test("ABI gate: a library built as another version is refused, naming both", async () => {
  using dir = tempDir();
  const bytes = realLibrary();
  assert.equal(patchBytes(bytes, `krepis-version:${VERSION}`, "krepis-version:9.9.9"), 1);
  const path = `${dir.path}/libkrepis-other-version.so`;
  await writeLibraryCopy(path, bytes);
  assert.throws(() => openLibrary(path), (error: unknown) => {
    assert.ok(error instanceof AbiMismatchError);
    assert.equal(error.code, "ABI_MISMATCH");
    assert.match(error.message, /version 9\.9\.9/);
    assert.match(error.message, new RegExp(`@krepis/sdk ${VERSION.replaceAll(".", "\\.")}`));
    assert.equal(error.actual.version, "9.9.9");
    assert.equal(error.expected.version, VERSION);
    return true;
  });
});

Deno.test("ABI gate: a library built against another header is refused, naming both", async () => {
  using dir = tempDir();
  const bytes = realLibrary();
  const other = "0".repeat(64);
  assert.equal(patchBytes(bytes, `krepis-abi:${ABI_HASH}`, `krepis-abi:${other}`), 1);
  const path = `${dir.path}/libkrepis-other-abi.so`;
  await writeLibraryCopy(path, bytes);
  assert.throws(() => openLibrary(path), (error: unknown) => {
    assert.ok(error instanceof AbiMismatchError);
    assert.match(error.message, new RegExp(`ABI ${other}`));
    assert.match(error.message, new RegExp(`ABI ${ABI_HASH}`));
    assert.equal(error.actual.abiHash, other);
    assert.equal(error.expected.abiHash, ABI_HASH);
    return true;
  });
});

Deno.test("a missing file or a foreign library is a LoadError", () => {
  using dir = tempDir();
  assert.throws(() => openLibrary(`${dir.path}/missing.so`), LoadError);
  const junk = `${dir.path}/junk.so`;
  Deno.writeTextFileSync(junk, "not a shared library");
  assert.throws(() => openLibrary(junk), LoadError);
});

Deno.test("one library per process: another libraryPath is refused", async () => {
  await using kernel = await Kernel.open({ libraryPath: libraryPath(), dataDir: null });
  await assert.rejects(
    Kernel.open({ libraryPath: "/elsewhere/libkrepis.so", dataDir: null }),
    (error: unknown) => error instanceof LoadError && /already loaded/.test(error.message),
  );
  assert.ok(kernel.stats().openKernels >= 1);
});

Deno.test("permissions: no --allow-ffi is a PermissionError in a child, not a crash", async () => {
  const outcome = await openInChild(["--allow-read", "--allow-env"], {
    libraryPathFromEnv: true,
    dataDir: null,
  });
  assert.equal(outcome.status, 0, outcome.stderr);
  assert.equal(outcome.name, PermissionError.name);
  assert.equal(outcome.code, "PERMISSION");
  assert.match(outcome.message ?? "", /--allow-ffi/);
});

Deno.test("permissions: no write permission for the data dir is a PermissionError", async () => {
  using dir = tempDir();
  const outcome = await openInChild(["--allow-ffi", "--allow-read", "--allow-env"], {
    libraryPathFromEnv: true,
    dataDir: `${dir.path}/data`,
  });
  assert.equal(outcome.name, PermissionError.name, outcome.stderr);
  assert.match(outcome.message ?? "", /--allow-write/);
  assert.throws(
    () => Deno.statSync(`${dir.path}/data`),
    Deno.errors.NotFound,
    "kernel did not act",
  );
});

Deno.test("permissions: read limited elsewhere is a PermissionError for the data dir", async () => {
  using dir = tempDir();
  const outcome = await openInChild(
    ["--allow-ffi", `--allow-read=${libraryPath()}`, `--allow-write=${dir.path}`, "--allow-env"],
    { libraryPathFromEnv: true, dataDir: `${dir.path}/data` },
  );
  assert.equal(outcome.name, PermissionError.name, outcome.stderr);
  assert.match(outcome.message ?? "", /--allow-read/);
});

Deno.test("permissions: with exactly the documented flags the kernel opens", async () => {
  using dir = tempDir();
  const outcome = await openInChild(
    [
      `--allow-ffi=${libraryPath()}`,
      `--allow-read=${dir.path}`,
      `--allow-write=${dir.path}`,
      "--allow-env=KREPIS_LIBRARY_PATH",
    ],
    { libraryPathFromEnv: true, dataDir: `${dir.path}/data` },
  );
  assert.equal(outcome.ok, true, `${outcome.message} ${outcome.stderr}`);
});

Deno.test({
  name: "download without net permission is a PermissionError before any request",
  permissions: { read: true, write: true, env: true, ffi: true, net: false },
  fn: async () => {
    using cache = tempDir();
    const bytes = realLibrary();
    await assert.rejects(
      resolveLibraryPath({ cacheDir: cache.path }, {
        manifest: await manifestFor(bytes),
        os: "linux",
        arch: "x86_64",
        env: noEnv,
      }),
      (error: unknown) => {
        assert.ok(error instanceof PermissionError, String(error));
        assert.match(error.message, /--allow-net=github\.com/);
        return true;
      },
    );
  },
});

Deno.test("the shipped manifest parses and names this package version", async () => {
  const { parseManifest } = await import("../bindings/_artifact.ts");
  const manifest = parseManifest(
    JSON.parse(Deno.readTextFileSync(new URL("../release/manifest.json", import.meta.url))),
  );
  assert.equal(manifest.version, VERSION);
});
