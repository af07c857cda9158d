/**
 * Lock-step check: one version everywhere. Fails (exit 1) listing every drift:
 *
 * - `Cargo.toml` `[workspace.package] version` (THE version),
 * - `deno.json` `version`,
 * - `bindings/_version.ts` `VERSION` (what the loader demands of the library;
 *   the library's own `krepis_version()` is `CARGO_PKG_VERSION`, inherited
 *   from the workspace),
 * - `Cargo.lock` entry of the `krepis` crate,
 * - `CHANGELOG.md`: an `## [Unreleased]` section, and no heading for a version
 *   newer than the current one.
 *
 * `release/manifest.json` is checked by the release workflow, which writes it.
 *
 * Run: `deno task release:check` (also part of `deno task check`).
 *
 * @module
 */

/** Reads a file below `root`. */
type Reader = (relative: string) => string;

/** Every version site found, by file. */
export interface VersionSites {
  cargoToml: string | null;
  denoJson: string | null;
  versionTs: string | null;
  cargoLock: string | null;
}

/** Extracts the version from every site. */
export function readVersionSites(read: Reader): VersionSites {
  const cargoToml = read("Cargo.toml").match(
    /\[workspace\.package\][^[]*?^version\s*=\s*"([^"]+)"/ms,
  )?.[1] ?? null;
  let denoJson: string | null = null;
  try {
    denoJson = JSON.parse(read("deno.json")).version ?? null;
  } catch {
    denoJson = null;
  }
  const versionTs = read("bindings/_version.ts").match(/VERSION = "([^"]+)"/)?.[1] ?? null;
  const cargoLock = read("Cargo.lock").match(/name = "krepis"\nversion = "([^"]+)"/)?.[1] ??
    null;
  return { cargoToml, denoJson, versionTs, cargoLock };
}

/** Returns the list of problems (empty = in lock-step). */
export function checkLockstep(read: Reader): string[] {
  const problems: string[] = [];
  const sites = readVersionSites(read);
  const version = sites.cargoToml;
  if (version === null) return ["Cargo.toml: no [workspace.package] version"];
  const names: Record<keyof VersionSites, string> = {
    cargoToml: "Cargo.toml [workspace.package] version",
    denoJson: "deno.json version",
    versionTs: "bindings/_version.ts VERSION",
    cargoLock: "Cargo.lock krepis version",
  };
  for (const [key, value] of Object.entries(sites) as [keyof VersionSites, string | null][]) {
    if (value !== version) {
      problems.push(`${names[key]} is ${value ?? "missing"}, expected ${version} (Cargo.toml)`);
    }
  }
  const changelog = read("CHANGELOG.md");
  if (!/^## \[Unreleased\]/m.test(changelog)) {
    problems.push("CHANGELOG.md has no `## [Unreleased]` section");
  }
  for (const match of changelog.matchAll(/^## \[(\d+\.\d+\.\d+[^\]]*)\]/gm)) {
    if (compareVersions(match[1], version) > 0) {
      problems.push(`CHANGELOG.md has a section for ${match[1]}, newer than ${version}`);
    }
  }
  return problems;
}

/** Compares two semver strings (pre-release < release). */
export function compareVersions(a: string, b: string): number {
  const parse = (v: string) => {
    const [core, pre] = v.split("-", 2);
    return { parts: core.split(".").map(Number), pre: pre ?? null };
  };
  const x = parse(a);
  const y = parse(b);
  for (let i = 0; i < 3; i++) {
    if ((x.parts[i] ?? 0) !== (y.parts[i] ?? 0)) return (x.parts[i] ?? 0) - (y.parts[i] ?? 0);
  }
  if (x.pre === y.pre) return 0;
  if (x.pre === null) return 1;
  if (y.pre === null) return -1;
  return x.pre < y.pre ? -1 : 1;
}

if (import.meta.main) {
  const root = new URL("../", import.meta.url);
  const problems = checkLockstep((relative) => Deno.readTextFileSync(new URL(relative, root)));
  if (problems.length > 0) {
    console.error(`release:check: versions are not in lock-step:\n  ${problems.join("\n  ")}`);
    Deno.exit(1);
  }
  console.log("release:check: versions are in lock-step");
}
