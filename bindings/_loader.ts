/**
 * Finding, verifying and opening the kernel library.
 *
 * 1. `libraryPath` option, else `KREPIS_LIBRARY_PATH` (read only when Deno's
 *    env permission for it is granted): open that file.
 * 2. Otherwise the verified cached library (`_cache.ts`): when
 *    `<cacheDir>/<version>/<artifact>-<sha256>.<ext>` is there and matches the
 *    manifest shipped in this package, open it: no network, no net
 *    permission, plug not even imported.
 * 3. Otherwise (and never with `cache: "only"`) download
 *    `<base>/<version>/<artifact>` with `@denosaurs/plug` (imported
 *    dynamically, only here), under the cache's install lock: check its
 *    SHA-256 against the manifest (on mismatch fetch once more, then refuse
 *    with an {@linkcode IntegrityError}), copy the verified bytes into a
 *    private temp file and rename it into the cache. plug's own cache file is
 *    never opened as the library.
 * 4. Open only the two identity symbols, compare version and ABI hash with the
 *    bindings (refuse with {@linkcode AbiMismatchError}), then open the full
 *    symbol table.
 *
 * Every permission a step needs is checked before the step acts, and a
 * missing one is a {@linkcode PermissionError} naming the flag.
 *
 * The library is loaded once per process and never closed: native threads
 * (tokio workers) may run code from it until the process exits.
 *
 * @module
 */

import { ABI_HASH, symbols } from "./_gen/symbols.ts";
import { VERSION } from "./_version.ts";
import { NativeLibrary } from "./_native.ts";
import { hasPermission, requirePermission } from "./_permissions.ts";
import {
  AbiMismatchError,
  IntegrityError,
  InvalidArgumentError,
  KrepisError,
  LoadError,
} from "./errors.ts";
import {
  artifactName,
  LIBRARY_NAME,
  type Manifest,
  parseManifest,
  type ReleaseArch,
  type ReleaseOs,
  sha256Hex,
  SUFFIXES,
} from "./_artifact.ts";
import {
  cachedFileName,
  cacheEnvVariables,
  checkCached,
  denoCacheDir,
  install,
  setAside,
  withInstallLock,
} from "./_cache.ts";
import manifestJson from "../release/manifest.json" with { type: "json" };

/** Where releases are downloaded from unless overridden. */
export const DEFAULT_DOWNLOAD_BASE_URL = "https://github.com/krepis/sdk/releases/download";
/** plug, pinned. A variable, so type checking and tests never fetch it. */
const PLUG_SPECIFIER = "jsr:@denosaurs/plug@1.1.0";

/** How to find the kernel library. */
export interface LibraryOptions {
  /** A local build to open (skips downloading). Default: `KREPIS_LIBRARY_PATH`. */
  libraryPath?: string;
  /** Mirror of the GitHub releases (`<base>/<version>/<file>`). Default: `KREPIS_DOWNLOAD_BASE_URL` or GitHub. */
  downloadBaseUrl?: string;
  /**
   * Cache policy: `"use"` (default: open the verified cached library, download
   * it when it is missing or damaged), `"only"` (offline: never download; a
   * missing or damaged cached library is an error), `"reloadAll"` (download
   * again).
   */
  cache?: "use" | "only" | "reloadAll";
  /**
   * Where verified libraries are cached. Default: `<Deno's cache dir>/krepis`
   * (`DENO_DIR`, else `$XDG_CACHE_HOME/deno` or `$HOME/.cache/deno` on Linux,
   * `$HOME/Library/Caches/deno` on macOS, `%LOCALAPPDATA%\deno` on Windows).
   */
  cacheDir?: string;
}

/** What the loader asks a downloader for (the arguments plug's `download` takes). */
export interface DownloadRequest {
  /** Directory URL: `<base>/<version>/`. */
  url: string;
  /** Library name; plug adds prefix, suffix and extension. */
  name: string;
  /** Per-architecture file name suffix. */
  suffixes: Record<ReleaseArch, string>;
  /** Cache policy; `"reloadAll"` on the refetch after a checksum mismatch. */
  cache: "use" | "only" | "reloadAll";
}

/** Downloads the artifact and returns the local path of the (cached) file. */
export type Downloader = (request: DownloadRequest) => Promise<string>;

/** Injectable parts of the download path (tests replace them; no network). */
export interface ResolveDependencies {
  downloader?: Downloader;
  manifest?: Manifest;
  os?: ReleaseOs;
  arch?: ReleaseArch;
  /** Reads an environment variable (default: `Deno.env`, if permitted). */
  env?: (name: string) => string | undefined;
}

function envVar(name: string): string | undefined {
  return hasPermission({ name: "env", variable: name }) ? Deno.env.get(name) : undefined;
}

/** Checks env permission for every variable in `names`, naming them all in the flag. */
function requireEnv(names: string[], action: string): void {
  for (const variable of names) {
    requirePermission({ name: "env", variable }, action, `--allow-env=${names.join(",")}`);
  }
}

async function plugDownloader(request: DownloadRequest): Promise<string> {
  // plug caches under Deno's cache dir, which it finds from these variables.
  const os = Deno.build.os;
  const variables = cacheEnvVariables(os);
  requireEnv(variables, "downloading the kernel library with plug (it caches in Deno's cache dir)");
  const plugDir = `${denoCacheDir(os, (name) => Deno.env.get(name)) ?? "."}/plug`;
  for (const name of ["read", "write"] as const) {
    requirePermission(
      { name, path: plugDir },
      `downloading the kernel library with plug (its cache is ${plugDir})`,
      `--allow-${name}=${plugDir}`,
    );
  }
  let plug: { download(options: DownloadRequest): Promise<string> };
  try {
    plug = await import(PLUG_SPECIFIER);
  } catch (cause) {
    throw new LoadError(
      `could not import ${PLUG_SPECIFIER} to download the kernel library; ` +
        "set KREPIS_LIBRARY_PATH (or the libraryPath option) to a local build instead",
      { cause },
    );
  }
  return await plug.download(request);
}

async function discard(path: string): Promise<void> {
  await Deno.remove(path).catch(() => {});
}

function platform(deps: ResolveDependencies): { os: ReleaseOs; arch: ReleaseArch } {
  const os = deps.os ?? Deno.build.os;
  const arch = deps.arch ?? Deno.build.arch;
  if (os !== "linux" && os !== "darwin" && os !== "windows") {
    throw new LoadError(
      `no prebuilt kernel for ${os}; build ffi/ and set KREPIS_LIBRARY_PATH`,
    );
  }
  return { os, arch };
}

/** The cache root: the option, else `<Deno's cache dir>/krepis` (env permission checked). */
function cacheRoot(options: LibraryOptions, deps: ResolveDependencies, os: ReleaseOs): string {
  if (options.cacheDir !== undefined) {
    if (typeof options.cacheDir !== "string" || options.cacheDir === "") {
      throw new InvalidArgumentError("cacheDir must be a non-empty string", {
        details: { field: "cacheDir" },
      });
    }
    return options.cacheDir.replace(/[\\/]+$/, "");
  }
  let env = deps.env;
  if (env === undefined) {
    requireEnv(
      cacheEnvVariables(os),
      "finding the kernel library cache (in Deno's cache dir)",
    );
    env = (name) => Deno.env.get(name);
  }
  const denoDir = denoCacheDir(os, env);
  if (denoDir === undefined) {
    throw new LoadError(
      `cannot find Deno's cache dir to cache the kernel library (${
        cacheEnvVariables(os).join(", ")
      } are unset); pass the cacheDir option or set DENO_DIR`,
    );
  }
  return `${denoDir}/krepis`;
}

/**
 * Returns the path of a verified library: the local one when configured,
 * otherwise the verified cached artifact, downloaded and installed first when
 * it is not cached yet.
 */
export async function resolveLibraryPath(
  options: LibraryOptions = {},
  deps: ResolveDependencies = {},
): Promise<string> {
  const env = deps.env ?? envVar;
  const local = options.libraryPath ?? env("KREPIS_LIBRARY_PATH");
  if (local !== undefined && local !== "") return local;

  const { os, arch } = platform(deps);
  const manifest = deps.manifest ?? parseManifest(manifestJson);
  const name = artifactName(os, arch);
  const expected = manifest.artifacts[name];
  if (expected === undefined) {
    throw new IntegrityError(
      `the package manifest (version ${manifest.version}) has no checksum for ${name}, ` +
        `so no verified kernel can be downloaded for ${os}-${arch}; ` +
        "build ffi/ locally and set KREPIS_LIBRARY_PATH",
      { details: { artifact: name } },
    );
  }
  const mode = options.cache ?? "use";
  if (mode !== "use" && mode !== "only" && mode !== "reloadAll") {
    throw new InvalidArgumentError(
      `cache must be "use", "only" or "reloadAll", got ${JSON.stringify(mode)}`,
      { details: { field: "cache" } },
    );
  }

  // The cache: a verified file there is opened as is.
  const dir = `${cacheRoot(options, deps, os)}/${VERSION}`;
  const path = `${dir}/${cachedFileName(name, expected.sha256)}`;
  requirePermission(
    { name: "read", path: dir },
    `reading the kernel library cache ${dir}`,
    `--allow-read=${dir}`,
  );
  const canWrite = hasPermission({ name: "write", path: dir });
  if (mode !== "reloadAll") {
    const cached = await checkCached(dir, path, expected, canWrite);
    if (cached.state === "verified") return path;
    if (mode === "only") {
      if (cached.state === "missing") {
        throw new LoadError(
          `the kernel library ${path} is not in the cache, and cache: "only" does not download; ` +
            'open once with cache: "use" (or set KREPIS_LIBRARY_PATH)',
          { details: { path } },
        );
      }
      throw new IntegrityError(
        `the cached kernel library ${path} is damaged (${cached.why}); it was not loaded, and ` +
          'cache: "only" does not download. Open once with cache: "use" to replace it',
        { details: { artifact: name, path, expected: expected.sha256 } },
      );
    }
  }

  // Downloading: every permission it needs, before anything is fetched.
  const base = (options.downloadBaseUrl ?? env("KREPIS_DOWNLOAD_BASE_URL") ??
    DEFAULT_DOWNLOAD_BASE_URL).replace(/\/+$/, "");
  const url = `${base}/${VERSION}/`;
  requirePermission(
    { name: "write", path: dir },
    `caching the downloaded kernel library in ${dir}`,
    `--allow-write=${dir}`,
  );
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (cause) {
    throw new InvalidArgumentError(`downloadBaseUrl is not a URL: ${base}`, {
      cause,
      details: { field: "downloadBaseUrl" },
    });
  }
  if (parsed.protocol === "http:" || parsed.protocol === "https:") {
    requirePermission(
      { name: "net", host: parsed.host },
      `downloading the kernel library from ${parsed.origin}`,
      `--allow-net=${parsed.host}`,
    );
  }
  const downloader = deps.downloader ?? plugDownloader;
  const request = (cache: DownloadRequest["cache"]): DownloadRequest => ({
    url,
    name: LIBRARY_NAME,
    suffixes: { ...SUFFIXES },
    cache,
  });
  const fetchOnce = async (
    cache: DownloadRequest["cache"],
  ): Promise<[string, Uint8Array<ArrayBuffer>, string]> => {
    let downloaded: string;
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      downloaded = await downloader(request(cache));
      bytes = await Deno.readFile(downloaded);
    } catch (cause) {
      if (cause instanceof KrepisError) throw cause;
      throw new LoadError(
        `downloading ${url}${name} failed: ${(cause as Error)?.message ?? cause}`,
        { cause },
      );
    }
    return [downloaded, bytes, await sha256Hex(bytes)];
  };

  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (cause) {
    throw new LoadError(`cannot create the kernel library cache ${dir}: ${cause}`, { cause });
  }
  return await withInstallLock(dir, async () => {
    // A peer may have installed it while this process waited for the lock.
    const cached = await checkCached(dir, path, expected, true);
    if (cached.state === "verified" && mode !== "reloadAll") return path;
    let [downloaded, bytes, actual] = await fetchOnce(mode);
    if (actual !== expected.sha256) {
      // The downloader's copy may be torn or stale: fetch once more before
      // refusing. (Under the lock: no SDK process is reading it.)
      await discard(downloaded);
      [downloaded, bytes, actual] = await fetchOnce("reloadAll");
    }
    if (actual !== expected.sha256) {
      await discard(downloaded);
      throw new IntegrityError(
        `the kernel library downloaded from ${url}${name} does not match the package manifest ` +
          `(expected sha256 ${expected.sha256}, got ${actual}, twice); it was deleted and not ` +
          "loaded. Check KREPIS_DOWNLOAD_BASE_URL / your mirror, or use a local build via " +
          "KREPIS_LIBRARY_PATH",
        { details: { artifact: name, expected: expected.sha256, actual } },
      );
    }
    // A damaged file at the path is renamed aside (a process may map it).
    if (cached.state !== "missing") await setAside(path);
    try {
      await install(dir, path, bytes, expected.sha256);
    } catch (cause) {
      throw new LoadError(`cannot install the kernel library into ${path}: ${cause}`, {
        cause,
        details: { path },
      });
    }
    return path;
  });
}

const identitySymbols = {
  krepis_version: symbols.krepis_version,
  krepis_abi_hash: symbols.krepis_abi_hash,
} as const;

function readIdentity(fill: (out: Uint8Array<ArrayBuffer>, cap: number) => number): string {
  const out = new Uint8Array(128);
  const length = fill(out, out.length);
  if (length < 0 || length > out.length) return `<unreadable: status ${length}>`;
  return new TextDecoder().decode(out.subarray(0, length));
}

/**
 * Opens the library at `path` after the ABI gate. Does not cache: use
 * {@linkcode loadLibrary}.
 */
export function openLibrary(path: string): NativeLibrary {
  requirePermission(
    { name: "ffi", path },
    `loading the kernel library ${path}`,
    `--allow-ffi`,
  );
  let identity: Deno.DynamicLibrary<typeof identitySymbols>;
  try {
    identity = Deno.dlopen(path, identitySymbols);
  } catch (cause) {
    throw new LoadError(
      `cannot open the kernel library ${path}: ${(cause as Error)?.message ?? cause}. ` +
        "Build it with `deno task build` or point KREPIS_LIBRARY_PATH at a krepis build",
      { cause, details: { path } },
    );
  }
  const actual = {
    version: readIdentity((out, cap) => identity.symbols.krepis_version(out, cap)),
    abiHash: readIdentity((out, cap) => identity.symbols.krepis_abi_hash(out, cap)),
  };
  const expected = { version: VERSION, abiHash: ABI_HASH };
  if (actual.version !== expected.version || actual.abiHash !== expected.abiHash) {
    // Safe to unload: nothing of this library has run beyond the two identity calls.
    identity.close();
    const what = actual.version !== expected.version
      ? `version ${actual.version}, but @krepis/sdk ${expected.version} needs version ${expected.version}`
      : `ABI ${actual.abiHash}, but these bindings were generated from ABI ${expected.abiHash}`;
    throw new AbiMismatchError(
      `the kernel library ${path} is ${what}. Use the library built from the same ` +
        `release (or rebuild ffi/ and run \`deno task codegen\`)`,
      { expected, actual },
      { details: { path } },
    );
  }
  let library: Deno.DynamicLibrary<typeof symbols>;
  try {
    library = Deno.dlopen(path, symbols);
  } catch (cause) {
    identity.close();
    throw new LoadError(`cannot bind the kernel's symbols in ${path}: ${cause}`, { cause });
  }
  // The full handle keeps the library mapped; the identity handle is redundant.
  identity.close();
  return new NativeLibrary(path, library, actual);
}

let loaded: Promise<NativeLibrary> | undefined;
let loadedPath: string | undefined;

/**
 * The process-wide kernel library, loading it on first use. A later call that
 * names a different `libraryPath` is refused (one kernel library per process).
 */
export async function loadLibrary(options: LibraryOptions = {}): Promise<NativeLibrary> {
  if (options.libraryPath !== undefined && typeof options.libraryPath !== "string") {
    throw new InvalidArgumentError("libraryPath must be a string");
  }
  if (loaded !== undefined) {
    const library = await loaded;
    if (options.libraryPath !== undefined && options.libraryPath !== loadedPath) {
      throw new LoadError(
        `the kernel library is already loaded from ${loadedPath}; ` +
          `a process can load only one (asked for ${options.libraryPath})`,
      );
    }
    return library;
  }
  const attempt = (async () => {
    const path = await resolveLibraryPath(options);
    loadedPath = path;
    return openLibrary(path);
  })();
  loaded = attempt;
  try {
    return await attempt;
  } catch (error) {
    // A failed load can be retried (e.g. after fixing permissions).
    loaded = undefined;
    loadedPath = undefined;
    throw error;
  }
}
