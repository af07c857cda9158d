/**
 * Artifact naming and the checksum manifest, shared by the loader (which asks
 * plug for a file) and the release build (which produces that file). One
 * function decides the name so the two cannot drift. It lives with the
 * bindings because the loader runs it in every application; the release
 * tooling (`release/build.ts`, `release/manifest.ts`) imports it from here.
 *
 * plug assembles `${prefix}${name}${suffix}.${extension}` from a directory URL;
 * it keys files by OS and architecture only (no libc), so the architecture is
 * the suffix.
 *
 * @module
 */

/** An operating system the kernel is released for (`Deno.build.os` values). */
export type ReleaseOs = "linux" | "darwin" | "windows";
/** A CPU architecture the kernel is released for (`Deno.build.arch` values). */
export type ReleaseArch = "x86_64" | "aarch64";

/** The library name given to plug. */
export const LIBRARY_NAME = "krepis";

/** File name prefixes per OS, exactly as plug's defaults. */
export const PREFIXES: Record<ReleaseOs, string> = { linux: "lib", darwin: "lib", windows: "" };
/** File extensions per OS, exactly as plug's defaults. */
export const EXTENSIONS: Record<ReleaseOs, string> = {
  linux: "so",
  darwin: "dylib",
  windows: "dll",
};
/** The suffix (per architecture) passed to plug as `suffixes`. */
export const SUFFIXES: Record<ReleaseArch, string> = { x86_64: "-x86_64", aarch64: "-aarch64" };

/** The Rust target triple built for each released OS/arch pair. */
export const RUST_TARGETS: Record<`${ReleaseOs}-${ReleaseArch}`, string> = {
  "linux-x86_64": "x86_64-unknown-linux-gnu",
  "linux-aarch64": "aarch64-unknown-linux-gnu",
  "darwin-x86_64": "x86_64-apple-darwin",
  "darwin-aarch64": "aarch64-apple-darwin",
  "windows-x86_64": "x86_64-pc-windows-msvc",
  "windows-aarch64": "aarch64-pc-windows-msvc",
};

/**
 * The release file name of the kernel for one OS/arch pair, as plug requests it.
 *
 * @example
 * ```ts
 * import { artifactName } from "./_artifact.ts";
 * artifactName("linux", "x86_64"); // "libkrepis-x86_64.so"
 * ```
 */
export function artifactName(os: ReleaseOs, arch: ReleaseArch): string {
  return `${PREFIXES[os]}${LIBRARY_NAME}${SUFFIXES[arch]}.${EXTENSIONS[os]}`;
}

/** The name of the file cargo builds for an OS (before renaming). */
export function cargoOutputName(os: ReleaseOs): string {
  return `${PREFIXES[os]}${LIBRARY_NAME}.${EXTENSIONS[os]}`;
}

/** One artifact's entry in the manifest. */
export interface ManifestEntry {
  /** SHA-256 of the file, lowercase hex. */
  sha256: string;
  /** Size in bytes. */
  size: number;
}

/** The checksum manifest shipped in the JSR package (`release/manifest.json`). */
export interface Manifest {
  /** The package version the artifacts were built as. */
  version: string;
  /** Artifact file name → checksum. */
  artifacts: Record<string, ManifestEntry>;
}

/**
 * Validates a parsed manifest, throwing a `TypeError` that names the bad field.
 *
 * @example
 * ```ts
 * import { parseManifest } from "./_artifact.ts";
 * parseManifest({ version: "0.1.0", artifacts: {} });
 * ```
 */
export function parseManifest(value: unknown): Manifest {
  const manifest = value as Manifest;
  if (typeof manifest !== "object" || manifest === null) {
    throw new TypeError("manifest must be an object");
  }
  if (typeof manifest.version !== "string") {
    throw new TypeError("manifest.version must be a string");
  }
  if (typeof manifest.artifacts !== "object" || manifest.artifacts === null) {
    throw new TypeError("manifest.artifacts must be an object");
  }
  for (const [name, entry] of Object.entries(manifest.artifacts)) {
    if (typeof entry?.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(entry.sha256)) {
      throw new TypeError(`manifest.artifacts["${name}"].sha256 must be 64 lowercase hex digits`);
    }
    if (!Number.isSafeInteger(entry.size) || entry.size <= 0) {
      throw new TypeError(`manifest.artifacts["${name}"].size must be a positive integer`);
    }
  }
  return manifest;
}

/**
 * SHA-256 of some bytes, lowercase hex.
 *
 * @example
 * ```ts
 * import { sha256Hex } from "./_artifact.ts";
 * await sha256Hex(new Uint8Array([1, 2, 3]));
 * ```
 */
export async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}
