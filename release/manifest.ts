/**
 * Collects `<artifact>.sha256` files (from `release/build.ts`) into the
 * manifest shipped in the JSR package and a `SHA256SUMS` for the GitHub release:
 *
 *   deno run -A release/manifest.ts dist/ [--manifest path]  (default release/manifest.json)
 *
 * Refuses artifacts whose checksum file does not match the file.
 *
 * @module
 */

import { type Manifest, parseManifest, sha256Hex } from "../bindings/_artifact.ts";
import { VERSION } from "../bindings/_version.ts";

/** Builds the manifest for every artifact in `dir`. */
export async function collectManifest(dir: string, version: string): Promise<Manifest> {
  const artifacts: Manifest["artifacts"] = {};
  const names = [...Deno.readDirSync(dir)]
    .map((entry) => entry.name)
    .filter((name) => name.endsWith(".sha256"))
    .sort();
  for (const checksumFile of names) {
    const name = checksumFile.slice(0, -".sha256".length);
    const [declared, declaredName] = (await Deno.readTextFile(`${dir}/${checksumFile}`)).trim()
      .split(/\s+/);
    const bytes = await Deno.readFile(`${dir}/${name}`);
    const actual = await sha256Hex(bytes);
    if (declared !== actual || declaredName !== name) {
      throw new Error(`release/manifest: ${checksumFile} does not match ${name} (${actual})`);
    }
    artifacts[name] = { sha256: actual, size: bytes.length };
  }
  if (Object.keys(artifacts).length === 0) {
    throw new Error(`release/manifest: no *.sha256 files in ${dir}`);
  }
  return parseManifest({ version, artifacts });
}

/** `SHA256SUMS` text for a manifest. */
export function sha256sums(manifest: Manifest): string {
  return Object.entries(manifest.artifacts)
    .map(([name, entry]) => `${entry.sha256}  ${name}\n`)
    .join("");
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? "dist";
  const manifestFlag = Deno.args.indexOf("--manifest");
  const target = manifestFlag >= 0
    ? Deno.args[manifestFlag + 1]
    : new URL("../release/manifest.json", import.meta.url);
  const manifest = await collectManifest(dir, VERSION);
  await Deno.writeTextFile(target, JSON.stringify(manifest, null, 2) + "\n");
  await Deno.writeTextFile(`${dir}/SHA256SUMS`, sha256sums(manifest));
  console.log(`release/manifest: ${Object.keys(manifest.artifacts).length} artifacts`);
}
