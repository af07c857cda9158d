// The library cache against a local mirror on 127.0.0.1, with real child
// processes (each one resolves, verifies and dlopens the library with the
// permissions a test gives it): cold and warm opens, cache: "only" offline,
// damaged cache files, every permission a step needs, and 8 processes opening
// at once with an empty cache, 50 rounds.
import assert from "node:assert/strict";
import { VERSION } from "../mod.ts";
import { artifactName, type ReleaseArch, sha256Hex } from "../bindings/_artifact.ts";
import { cacheEnvVariables } from "../bindings/_cache.ts";
import { fixture, libraryPath, tempDir } from "./_helpers.ts";

const ARTIFACT = artifactName(Deno.build.os as "linux", Deno.build.arch as ReleaseArch);
const ENV_FLAG = `--allow-env=${cacheEnvVariables(Deno.build.os).join(",")}`;
const ROUNDS = Number(Deno.env.get("KREPIS_CACHE_ROUNDS") ?? "50");

/** The artifact the mirror serves: the built library, without debug info when `strip` exists. */
const artifact = (() => {
  const dir = Deno.makeTempDirSync({ prefix: "krepis-artifact-" });
  const path = `${dir}/${ARTIFACT}`;
  const stripped = Deno.build.os === "linux" &&
    new Deno.Command("strip", { args: ["--strip-debug", "-o", path, libraryPath()] })
      .outputSync().success;
  if (!stripped) Deno.copyFileSync(libraryPath(), path);
  const bytes = Deno.readFileSync(path);
  Deno.removeSync(dir, { recursive: true });
  return bytes;
})();
const SHA256 = await sha256Hex(artifact);

/** Deno's own cache dir, whose module caches a child's DENO_DIR links to. */
const REAL_DENO_DIR: string = JSON.parse(
  new TextDecoder().decode(
    new Deno.Command(Deno.execPath(), { args: ["info", "--json"] }).outputSync().stdout,
  ),
).denoDir;

/**
 * A fresh DENO_DIR for children in `dir`: the SDK caches the library there,
 * while Deno finds the modules it already has through links to its own caches.
 */
function freshDenoDir(dir: string): string {
  const denoDir = `${dir}/deno`;
  Deno.mkdirSync(denoDir, { recursive: true });
  for (const cache of ["npm", "remote", "gen", "registries"]) {
    try {
      Deno.symlinkSync(`${REAL_DENO_DIR}/${cache}`, `${denoDir}/${cache}`);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  return denoDir;
}

interface Mirror extends AsyncDisposable {
  baseUrl: string;
  host: string;
  requests: () => number;
}

/** Serves the artifact at `/<version>/<artifact>` on 127.0.0.1, counting requests. */
function startMirror(): Mirror {
  let requests = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (request) => {
    requests++;
    const path = new URL(request.url).pathname;
    if (path !== `/${VERSION}/${ARTIFACT}`) return new Response("not found", { status: 404 });
    return new Response(artifact, { headers: { "content-type": "application/octet-stream" } });
  });
  const host = `127.0.0.1:${server.addr.port}`;
  return {
    baseUrl: `http://${host}`,
    host,
    requests: () => requests,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

interface Outcome {
  ok: boolean;
  path?: string;
  name?: string;
  message?: string;
  details?: Record<string, string>;
}

/** Runs tests/fixtures/load_cached.ts with exactly `flags` and `env`. */
async function load(
  flags: string[],
  args: { baseUrl: string; cacheDir?: string; plugDir?: string; cache?: string },
  env: { DENO_DIR: string },
): Promise<Outcome> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      ...flags,
      fixture("load_cached.ts"),
      JSON.stringify({ ...args, sha256: SHA256, size: artifact.length }),
    ],
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(output.stdout).trim();
  const stderr = new TextDecoder().decode(output.stderr);
  try {
    return JSON.parse(stdout.split("\n").at(-1) ?? "");
  } catch {
    throw new Error(`the child printed no outcome (exit ${output.code}):\n${stdout}\n${stderr}`);
  }
}

/** Everything a first (downloading) run needs, scoped to `dir`. */
function coldFlags(dir: string, mirror: Mirror): string[] {
  return [
    "--allow-ffi",
    `--allow-read=${dir}`,
    `--allow-write=${dir}`,
    `--allow-net=${mirror.host}`,
    ENV_FLAG,
  ];
}

Deno.test("library cache: cold open downloads once; warm opens need no net and no plug", async () => {
  await using mirror = startMirror();
  using dir = tempDir();
  const denoDir = freshDenoDir(dir.path); // Deno's cache dir, from DENO_DIR
  const env = { DENO_DIR: denoDir };
  const cached = `${denoDir}/krepis/${VERSION}/${ARTIFACT.replace(/\.[^.]+$/, `-${SHA256}$&`)}`;

  // First run: exactly the README's flags for a first run (Deno's cache dir scoped).
  const cold = await load(
    [
      "--allow-ffi",
      `--allow-read=${denoDir}`,
      `--allow-write=${denoDir}`,
      `--allow-net=${mirror.host}`,
      ENV_FLAG,
    ],
    { baseUrl: mirror.baseUrl, plugDir: `${denoDir}/plug` },
    env,
  );
  assert.equal(cold.ok, true, cold.message);
  assert.equal(cold.path, cached, "the content-addressed path is what was opened");
  assert.equal(mirror.requests(), 1);
  assert.equal(await sha256Hex(Deno.readFileSync(cached)), SHA256);

  // Warm: the README's flags for later runs. No net permission, and the
  // default downloader (real plug, which cannot even be imported here).
  const warmFlags = [`--allow-ffi=${denoDir}/krepis`, `--allow-read=${denoDir}/krepis`, ENV_FLAG];
  for (const cache of ["use", "only"]) {
    const warm = await load(warmFlags, { baseUrl: mirror.baseUrl, cache }, env);
    assert.equal(warm.ok, true, `${cache}: ${warm.message}`);
    assert.equal(warm.path, cached);
  }
  // Without write permission no marker can be written: it hashes, and still opens.
  Deno.removeSync(`${cached}.verified`);
  const unmarked = await load(warmFlags, { baseUrl: mirror.baseUrl }, env);
  assert.equal(unmarked.ok, true, unmarked.message);
  assert.equal(mirror.requests(), 1, "warm opens never touched the network");
});

Deno.test('library cache: cache: "only" never touches the network, even when damaged', async () => {
  await using mirror = startMirror();
  using dir = tempDir();
  const cacheDir = `${dir.path}/cache`;
  const plugDir = `${dir.path}/plug`;
  const flags = coldFlags(dir.path, mirror);
  const env = { DENO_DIR: freshDenoDir(dir.path) };

  const empty = await load(
    flags,
    { baseUrl: mirror.baseUrl, cacheDir, plugDir, cache: "only" },
    env,
  );
  assert.equal(empty.name, "LoadError", empty.message);
  assert.match(empty.message!, /not in the cache, and cache: "only" does not download/);
  assert.equal(mirror.requests(), 0);

  const cold = await load(flags, { baseUrl: mirror.baseUrl, cacheDir, plugDir }, env);
  assert.equal(cold.ok, true, cold.message);
  assert.equal(mirror.requests(), 1);

  // Damage the cached file (same size, one byte flipped).
  const path = cold.path!;
  Deno.chmodSync(path, 0o644);
  const bytes = Deno.readFileSync(path);
  bytes[bytes.length >> 1] ^= 0x55;
  Deno.writeFileSync(path, bytes);
  const damaged = await load(
    flags,
    { baseUrl: mirror.baseUrl, cacheDir, plugDir, cache: "only" },
    env,
  );
  assert.equal(damaged.name, "IntegrityError", damaged.message);
  assert.equal(damaged.details?.path, path);
  assert.match(damaged.message!, /is damaged \(its sha256 is [0-9a-f]{64}/);
  assert.equal(mirror.requests(), 1, 'cache: "only" did not download');

  // cache: "use" sets the damaged file aside (never rewrites it) and downloads again.
  const { ino } = Deno.statSync(path);
  Deno.removeSync(plugDir, { recursive: true }); // so the healing really downloads
  const healed = await load(flags, { baseUrl: mirror.baseUrl, cacheDir, plugDir }, env);
  assert.equal(healed.ok, true, healed.message);
  assert.equal(healed.path, path);
  assert.equal(mirror.requests(), 2);
  assert.notEqual(Deno.statSync(path).ino, ino, "a new file, renamed into place");
  const aside = [...Deno.readDirSync(`${cacheDir}/${VERSION}`)].filter((entry) =>
    entry.name.includes(".damaged-")
  );
  assert.equal(aside.length, 1, "the damaged file was renamed aside, not rewritten");
});

Deno.test("library cache: each permission a step needs is a PermissionError naming the flag", async () => {
  await using mirror = startMirror();
  using dir = tempDir();
  const cacheDir = `${dir.path}/cache`;
  const plugDir = `${dir.path}/plug`;
  const versionDir = `${cacheDir}/${VERSION}`;
  const args = { baseUrl: mirror.baseUrl, cacheDir, plugDir };
  const env = { DENO_DIR: freshDenoDir(dir.path) };
  const all = coldFlags(dir.path, mirror);
  const without = (prefix: string) => all.filter((flag) => !flag.startsWith(prefix));

  const cases: [string[], typeof args | Omit<typeof args, "cacheDir">, RegExp][] = [
    [without("--allow-net"), args, new RegExp(`--allow-net=${mirror.host.replace(".", "\\.")}`)],
    [without("--allow-write"), args, new RegExp(`--allow-write=${versionDir}`)],
    [without("--allow-read"), args, new RegExp(`--allow-read=${versionDir}`)],
    // The default cache dir is found from the environment.
    [without("--allow-env"), { baseUrl: mirror.baseUrl, plugDir }, new RegExp(ENV_FLAG)],
  ];
  for (const [flags, caseArgs, flag] of cases) {
    const outcome = await load(flags, caseArgs, env);
    assert.equal(outcome.name, "PermissionError", `${flags}: ${outcome.name} ${outcome.message}`);
    assert.match(outcome.message!, flag);
  }
  assert.equal(mirror.requests(), 0, "nothing was fetched before the permissions were checked");
  assert.throws(() => Deno.statSync(versionDir), Deno.errors.NotFound, "nothing was written");
});

Deno.test({
  name: `library cache: 8 processes opening at once with an empty cache, ${ROUNDS} rounds`,
  fn: async () => {
    await using mirror = startMirror();
    using dir = tempDir();
    const env = { DENO_DIR: freshDenoDir(dir.path) };
    const failures: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const cacheDir = `${dir.path}/cache-${round}`;
      const plugDir = `${dir.path}/plug-${round}`; // shared by the round, written in place
      const outcomes = await Promise.all(
        Array.from(
          { length: 8 },
          () =>
            load(coldFlags(dir.path, mirror), { baseUrl: mirror.baseUrl, cacheDir, plugDir }, env),
        ),
      );
      const paths = new Set(outcomes.map((outcome) => outcome.path));
      for (const outcome of outcomes) {
        if (!outcome.ok) failures.push(`round ${round}: ${outcome.name}: ${outcome.message}`);
      }
      assert.equal(paths.size, 1, `round ${round}: one path for everyone`);
      Deno.removeSync(cacheDir, { recursive: true });
      Deno.removeSync(plugDir, { recursive: true });
    }
    assert.deepEqual(failures, []);
    console.log(`${ROUNDS} rounds × 8 processes: all opened; ${mirror.requests()} downloads`);
  },
});
