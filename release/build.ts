/**
 * Builds the kernel for one target in release mode (LTO, stripped), names the
 * file as plug will request it, and writes its checksum:
 *
 *   deno task build:release                       # the host target
 *   deno run -A release/build.ts --target aarch64-unknown-linux-gnu --cross
 *
 * Output in `dist/` (or `--out DIR`): `<artifact>` and `<artifact>.sha256`
 * (`sha256sum` format). `release/manifest.ts` turns a directory of those into
 * `release/manifest.json` and `SHA256SUMS`.
 *
 * @module
 */

import {
  artifactName,
  cargoOutputName,
  type ReleaseArch,
  type ReleaseOs,
  RUST_TARGETS,
  sha256Hex,
} from "../bindings/_artifact.ts";

/** OS/arch of a Rust target triple this project releases. */
export function platformOfTarget(target: string): { os: ReleaseOs; arch: ReleaseArch } {
  for (const [platform, triple] of Object.entries(RUST_TARGETS)) {
    if (triple === target) {
      const [os, arch] = platform.split("-") as [ReleaseOs, ReleaseArch];
      return { os, arch };
    }
  }
  throw new Error(
    `release/build: ${target} is not a released target (${Object.values(RUST_TARGETS).join(", ")})`,
  );
}

/** The Rust target triple of the machine running this script. */
export function hostTarget(): string {
  const key = `${Deno.build.os}-${Deno.build.arch}` as keyof typeof RUST_TARGETS;
  const target = RUST_TARGETS[key];
  if (!target) throw new Error(`release/build: no released target for ${key}`);
  return target;
}

/** Copies a built library to `outDir` under its artifact name and writes the checksum file. */
export async function packageArtifact(
  builtFile: string,
  target: string,
  outDir: string,
): Promise<{ name: string; path: string; sha256: string; size: number }> {
  const { os, arch } = platformOfTarget(target);
  const name = artifactName(os, arch);
  await Deno.mkdir(outDir, { recursive: true });
  const path = `${outDir}/${name}`;
  await Deno.copyFile(builtFile, path);
  const bytes = await Deno.readFile(path);
  const sha256 = await sha256Hex(bytes);
  await Deno.writeTextFile(`${path}.sha256`, `${sha256}  ${name}\n`);
  return { name, path, sha256, size: bytes.length };
}

if (import.meta.main) {
  const args = [...Deno.args];
  const option = (flag: string): string | undefined => {
    const index = args.indexOf(flag);
    return index >= 0 ? args[index + 1] : undefined;
  };
  const target = option("--target") ?? hostTarget();
  const outDir = option("--out") ?? "dist";
  const tool = args.includes("--cross") ? "cross" : "cargo";
  const root = new URL("../", import.meta.url);
  const rootPath = decodeURIComponent(root.pathname).replace(/^\/([A-Za-z]:)/, "$1");
  const { code } = await new Deno.Command(tool, {
    args: ["build", "-p", "krepis", "--release", "--locked", "--target", target],
    cwd: rootPath,
  }).spawn().status;
  if (code !== 0) Deno.exit(code);
  const targetDir = Deno.env.get("CARGO_TARGET_DIR") ?? `${rootPath}/target`;
  const { os } = platformOfTarget(target);
  const built = `${targetDir}/${target}/release/${cargoOutputName(os)}`;
  const artifact = await packageArtifact(built, target, outDir);
  console.log(`${artifact.path} ${artifact.size} bytes sha256 ${artifact.sha256}`);
}
