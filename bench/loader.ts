/**
 * Warm open of a downloaded kernel: finding the verified library in the
 * cache, then `dlopen` + the ABI gate, in a fresh process each time (a
 * process loads the library once).
 *
 * - `warm_open_marker`: the cache's verified-once marker (size, mtime, inode)
 *   matches, so the file is not hashed.
 * - `warm_open_hash`: the marker is removed before each run, so the file is
 *   read and hashed, as every warm open did before the cache had markers
 *   (that path also imported plug each time, which cannot be measured here:
 *   jsr.io is unreachable from these machines).
 *
 * Wall time of the whole child process minus that of an empty child
 * (`deno_start`), medians of interleaved runs; ratio > 1: the marker wins.
 *
 * Run: `deno task bench loader`.
 *
 * @module
 */

import { VERSION } from "../mod.ts";
import { artifactName, type ReleaseArch, sha256Hex } from "../bindings/_artifact.ts";
import { cachedFileName, install } from "../bindings/_cache.ts";
import { libraryPath, median, ratio, report } from "./_harness.ts";

const ROUNDS = 15;
/** The children live in a temp dir: they need the project's import map. */
const CONFIG = decodeURIComponent(new URL("../deno.json", import.meta.url).pathname);
const bytes = Deno.readFileSync(libraryPath());
const sha256 = await sha256Hex(bytes);
const name = artifactName(Deno.build.os as "linux", Deno.build.arch as ReleaseArch);
const cacheDir = Deno.makeTempDirSync({ prefix: "krepis-bench-cache-" });
const dir = `${cacheDir}/${VERSION}`;
Deno.mkdirSync(dir, { recursive: true });
const path = `${dir}/${cachedFileName(name, sha256)}`;
await install(dir, path, bytes, sha256);
report("library_size", bytes.length / 1e6, "MB");

const child = `
import { openLibrary, resolveLibraryPath } from ${
  JSON.stringify(new URL("../bindings/_loader.ts", import.meta.url).href)
};
const path = await resolveLibraryPath(
  { cacheDir: ${JSON.stringify(cacheDir)}, cache: "only" },
  { manifest: { version: ${JSON.stringify(VERSION)}, artifacts: { ${
  JSON.stringify(name)
}: { sha256: ${JSON.stringify(sha256)}, size: ${bytes.length} } } }, env: () => undefined },
);
openLibrary(path);
`;
const script = `${cacheDir}/open.ts`;
Deno.writeTextFileSync(script, child);
const empty = `${cacheDir}/empty.ts`;
Deno.writeTextFileSync(
  empty,
  `import ${JSON.stringify(new URL("../bindings/_loader.ts", import.meta.url).href)};\n`,
);

function timeChild(file: string): number {
  const start = performance.now();
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", CONFIG, file],
    stdout: "null",
    stderr: "piped",
  }).outputSync();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  return performance.now() - start;
}

const start: number[] = [];
const marker: number[] = [];
const hash: number[] = [];
timeChild(script); // warm Deno's own caches
for (let i = 0; i < ROUNDS; i++) {
  start.push(timeChild(empty));
  marker.push(timeChild(script));
  Deno.removeSync(`${path}.verified`);
  hash.push(timeChild(script)); // rewrites the marker
}
const base = median(start);
report("deno_start", base, "ms");
report("warm_open_marker", median(marker) - base, "ms");
report("warm_open_hash", median(hash) - base, "ms");
ratio("warm_open", median(hash) - base, median(marker) - base);
Deno.removeSync(cacheDir, { recursive: true });
