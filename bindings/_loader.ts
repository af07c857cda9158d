/**
 * Finding, verifying and opening the kernel library.
 *
 * 1. `libraryPath` option, else `KREPIS_LIBRARY_PATH` (read only when Deno's
 *    env permission for it is granted): open that file.
 * 2. Otherwise download `<base>/<version>/<artifact>` with `@denosaurs/plug`
 *    (imported dynamically, only here), then check its SHA-256 against the
 *    manifest shipped in this package; on mismatch discard it, fetch once more,
 *    then refuse with an {@linkcode IntegrityError}.
 * 3. Open only the two identity symbols, compare version and ABI hash with the
 *    bindings (refuse with {@linkcode AbiMismatchError}), then open the full
 *    symbol table.
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
  /** plug's cache policy: `"use"` (default), `"only"` (offline), `"reloadAll"`. */
  cache?: "use" | "only" | "reloadAll";
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

async function plugDownloader(request: DownloadRequest): Promise<string> {
  const url = new URL(request.url);
  if (url.protocol === "http:" || url.protocol === "https:") {
    requirePermission(
      { name: "net", host: url.host },
      `downloading the kernel library from ${url.origin}`,
      `--allow-net=${url.host}`,
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

async function fileSha256(path: string): Promise<string> {
  return await sha256Hex(await Deno.readFile(path));
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

/**
 * Returns the path of a verified library: the local one when configured,
 * otherwise a downloaded artifact whose SHA-256 matches the manifest.
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
  const base = (options.downloadBaseUrl ?? env("KREPIS_DOWNLOAD_BASE_URL") ??
    DEFAULT_DOWNLOAD_BASE_URL).replace(/\/+$/, "");
  const url = `${base}/${VERSION}/`;
  const downloader = deps.downloader ?? plugDownloader;
  const request = (cache: DownloadRequest["cache"]): DownloadRequest => ({
    url,
    name: LIBRARY_NAME,
    suffixes: { ...SUFFIXES },
    cache,
  });

  const fetchOnce = async (cache: DownloadRequest["cache"]): Promise<[string, string]> => {
    let path: string;
    try {
      path = await downloader(request(cache));
    } catch (cause) {
      if (cause instanceof KrepisError) throw cause;
      throw new LoadError(
        `downloading ${url}${name} failed: ${(cause as Error)?.message ?? cause}`,
        { cause },
      );
    }
    return [path, await fileSha256(path)];
  };

  let [path, actual] = await fetchOnce(options.cache ?? "use");
  if (actual === expected.sha256) return path;
  // The cached copy may be a torn or stale download (plug writes in place):
  // throw it away and fetch once more before refusing.
  await discard(path);
  [path, actual] = await fetchOnce("reloadAll");
  if (actual === expected.sha256) return path;
  await discard(path);
  throw new IntegrityError(
    `the kernel library downloaded from ${url}${name} does not match the package manifest ` +
      `(expected sha256 ${expected.sha256}, got ${actual}, twice); it was deleted and not loaded. ` +
      "Check KREPIS_DOWNLOAD_BASE_URL / your mirror, or use a local build via KREPIS_LIBRARY_PATH",
    { details: { artifact: name, expected: expected.sha256, actual } },
  );
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
