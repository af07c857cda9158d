/**
 * The cache of verified kernel libraries: `<cacheDir>/<version>/<artifact
 * with its SHA-256 before the extension>`, e.g.
 * `~/.cache/deno/krepis/0.1.0/libkrepis-x86_64-<sha256>.so`.
 *
 * A cached file is written once and never rewritten or deleted in place: a
 * download goes to a private temp file, is verified, made read-only and
 * renamed into its content-addressed path (a rename is atomic, and a process
 * that has the old file mapped keeps it). A file found damaged is renamed
 * aside, never truncated. So a process never maps a file another one is
 * writing (plug writes its cache in place: two processes downloading at once
 * used to truncate a library the other had mapped, SIGBUS).
 *
 * Installing happens under an exclusive lock on `<cacheDir>/<version>/.lock`,
 * so concurrent first opens download once; the others wait and find the file.
 *
 * Verifying a 12 MB library costs ~30–60 ms of hashing; a marker next to the
 * file (`.verified`: size, mtime, inode and checksum at the time it was
 * hashed) lets a warm open skip it while the file is unchanged.
 *
 * @module
 */

import { sha256Hex } from "./_artifact.ts";

/** The environment variables Deno's cache dir is derived from, per OS (plug reads the same). */
export function cacheEnvVariables(os: typeof Deno.build.os): string[] {
  switch (os) {
    case "windows":
      return ["DENO_DIR", "LOCALAPPDATA"];
    case "darwin":
      return ["DENO_DIR", "HOME"];
    default:
      return ["DENO_DIR", "XDG_CACHE_HOME", "HOME"];
  }
}

/**
 * Deno's cache dir as Deno and plug compute it: `DENO_DIR`, else the OS
 * cache dir + `/deno`. `undefined` when the variables it needs are unset.
 */
export function denoCacheDir(
  os: typeof Deno.build.os,
  env: (name: string) => string | undefined,
): string | undefined {
  const denoDir = env("DENO_DIR");
  if (denoDir) return denoDir;
  switch (os) {
    case "windows": {
      const local = env("LOCALAPPDATA");
      return local ? `${local}\\deno` : undefined;
    }
    case "darwin": {
      const home = env("HOME");
      return home ? `${home}/Library/Caches/deno` : undefined;
    }
    default: {
      const xdg = env("XDG_CACHE_HOME");
      if (xdg) return `${xdg}/deno`;
      const home = env("HOME");
      return home ? `${home}/.cache/deno` : undefined;
    }
  }
}

/** The content-addressed file name of an artifact: its checksum before the extension. */
export function cachedFileName(artifact: string, sha256: string): string {
  const dot = artifact.lastIndexOf(".");
  return dot < 0
    ? `${artifact}-${sha256}`
    : `${artifact.slice(0, dot)}-${sha256}${artifact.slice(dot)}`;
}

/** What was expected of a cached file. */
export interface Expected {
  sha256: string;
  size: number;
}

/** The state of a cached file. */
export type CachedState =
  | { state: "verified" }
  | { state: "missing" }
  | { state: "damaged"; why: string };

interface Marker {
  size: number;
  mtimeMs: number | null;
  ino: number | null;
  sha256: string;
}

function markerPath(path: string): string {
  return `${path}.verified`;
}

function markerOf(info: Deno.FileInfo, sha256: string): Marker {
  return { size: info.size, mtimeMs: info.mtime?.getTime() ?? null, ino: info.ino, sha256 };
}

function sameMarker(a: Marker, b: Marker): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ino === b.ino && a.sha256 === b.sha256;
}

async function readMarker(path: string): Promise<Marker | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(markerPath(path))) as Marker;
  } catch {
    return undefined;
  }
}

/** A unique name for a private temp file in `dir`. */
function tempPath(dir: string, what: string): string {
  return `${dir}/.${what}-${Deno.pid}-${crypto.randomUUID()}.tmp`;
}

/** Writes `text` to `path` atomically (temp file + rename); best effort. */
async function writeAtomically(dir: string, path: string, text: string): Promise<void> {
  const temp = tempPath(dir, "marker");
  try {
    await Deno.writeTextFile(temp, text);
    await Deno.rename(temp, path);
  } catch {
    await Deno.remove(temp).catch(() => {});
  }
}

/**
 * Checks the cached file at `path` against `expected` without changing it:
 * by its marker when the file is unchanged since it was hashed, else by
 * hashing it (and writing the marker when `dir` is writable).
 */
export async function checkCached(
  dir: string,
  path: string,
  expected: Expected,
  canWrite: boolean,
): Promise<CachedState> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { state: "missing" };
    throw error;
  }
  if (info.size !== expected.size) {
    return { state: "damaged", why: `it has ${info.size} bytes, not ${expected.size}` };
  }
  const marker = await readMarker(path);
  if (marker !== undefined && sameMarker(marker, markerOf(info, expected.sha256))) {
    return { state: "verified" };
  }
  const actual = await sha256Hex(await Deno.readFile(path));
  if (actual !== expected.sha256) {
    return { state: "damaged", why: `its sha256 is ${actual}, not ${expected.sha256}` };
  }
  if (canWrite) {
    await writeAtomically(dir, markerPath(path), JSON.stringify(markerOf(info, expected.sha256)));
  }
  return { state: "verified" };
}

/**
 * Installs verified `bytes` at `path`: a private temp file, synced, made
 * read-only, renamed into place; then its marker.
 */
export async function install(
  dir: string,
  path: string,
  bytes: Uint8Array,
  sha256: string,
): Promise<void> {
  const temp = tempPath(dir, "download");
  try {
    {
      using file = await Deno.open(temp, { write: true, createNew: true, mode: 0o644 });
      for (let written = 0; written < bytes.length;) {
        written += await file.write(bytes.subarray(written));
      }
      await file.syncData();
    }
    if (Deno.build.os !== "windows") await Deno.chmod(temp, 0o444);
    await Deno.rename(temp, path);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw error;
  }
  const info = await Deno.stat(path);
  await writeAtomically(dir, markerPath(path), JSON.stringify(markerOf(info, sha256)));
}

/** Renames a damaged cached file aside (a process may have it mapped: never truncate it). */
export async function setAside(path: string): Promise<void> {
  await Deno.rename(path, `${path}.damaged-${crypto.randomUUID()}`).catch(() => {});
  await Deno.remove(markerPath(path)).catch(() => {});
}

/** Runs `fn` holding the exclusive install lock of `dir` (other processes wait). */
export async function withInstallLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  using lock = await Deno.open(`${dir}/.lock`, { read: true, write: true, create: true });
  await lock.lock(true);
  try {
    return await fn();
  } finally {
    await lock.unlock().catch(() => {});
  }
}
