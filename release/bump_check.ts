/**
 * End-to-end check of the release bump with the real cargo-release: clones the
 * committed repository into a temporary directory, runs
 * `cargo release <version> --execute` there (no push, no publish), and checks
 * that every version site moved together, the commit and the bare-version tag
 * exist, and the lock-step check passes. Used by `.ci/run`.
 *
 *   deno run -A release/bump_check.ts [version]
 *
 * @module
 */

import { checkLockstep, readVersionSites } from "./lockstep.ts";

const version = Deno.args[0] ?? "9.8.7";
const root = decodeURIComponent(new URL("../", import.meta.url).pathname).replace(
  /^\/([A-Za-z]:)/,
  "$1",
);

async function run(cmd: string, args: string[], cwd: string): Promise<string> {
  const output = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
  if (!output.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}`);
  return text;
}

const temp = await Deno.makeTempDir({ prefix: "krepis-bump-" });
try {
  await run("git", ["clone", "--quiet", root, temp], root);
  // CI checks out pull requests on a detached merge commit; cargo-release
  // only releases from main (release.toml), as a maintainer would.
  await run("git", ["checkout", "-q", "-B", "main"], temp);
  await run("git", ["config", "user.email", "release-check@krepis.invalid"], temp);
  await run("git", ["config", "user.name", "release check"], temp);
  await run("cargo", [
    "release",
    version,
    "--execute",
    "--no-confirm",
    "--no-push",
    "--no-publish",
    "--no-verify",
  ], temp);
  const read = (relative: string) => Deno.readTextFileSync(`${temp}/${relative}`);
  const problems = checkLockstep(read);
  const sites = readVersionSites(read);
  for (const [site, value] of Object.entries(sites)) {
    if (value !== version) problems.push(`${site} is ${value}, expected ${version}`);
  }
  if (JSON.parse(read("release/manifest.json")).version !== version) {
    problems.push("release/manifest.json version did not move");
  }
  if (!read("README.md").includes(`jsr:@krepis/sdk@${version}`)) {
    problems.push("README.md import line did not move");
  }
  if (
    !new RegExp(`^## \\[${version.replaceAll(".", "\\.")}\\] - \\d{4}-\\d{2}-\\d{2}$`, "m").test(
      read("CHANGELOG.md"),
    )
  ) {
    problems.push("CHANGELOG.md has no dated heading for the release");
  }
  const tags = await run("git", ["tag", "--list"], temp);
  if (!tags.split("\n").includes(version)) {
    problems.push(`no tag named ${version} (got ${tags.trim()})`);
  }
  const subject = (await run("git", ["log", "-1", "--format=%s"], temp)).trim();
  if (subject !== `Release ${version}`) problems.push(`release commit is "${subject}"`);
  if (problems.length > 0) {
    console.error(`bump_check: cargo release ${version} left drift:\n  ${problems.join("\n  ")}`);
    Deno.exit(1);
  }
  console.log(
    `bump_check: cargo release ${version} moved every version site, committed and tagged`,
  );
} finally {
  await Deno.remove(temp, { recursive: true });
}
