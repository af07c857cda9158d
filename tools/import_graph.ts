/**
 * Checks that imports only point down, on both sides of the boundary (part
 * of `deno task check`; exits 1 and names the offending imports otherwise).
 *
 * The kernel (`ffi/src`, graph from `tools/_rust_imports.ts`):
 *
 * - no import cycle among its source files (a folder's `mod.rs` counts as a
 *   file: its children may not import it back);
 * - foundation modules (listed below) import no capability, and no
 *   capability imports `lifecycle` or `diagnostics` (the two modules that
 *   sit on top).
 *
 * The bindings (`bindings/`):
 *
 * - no import cycle among `bindings/` modules (type-only imports count too);
 * - foundation modules (the other top-level `bindings/*.ts` files: boundary,
 *   loader, errors, owner, rings, events, context, checks…) import no
 *   capability;
 * - nothing in `bindings/` imports `kernel.ts`, the composition root (it
 *   imports the capabilities; `mod.ts` imports it);
 * - nothing in `bindings/` imports a file outside it except the checksum
 *   manifest the loader reads (`release/` may import `bindings/`, not the
 *   other way round).
 *
 * A capability is a folder of `bindings/` (`store/`, `transport/`, `http/`)
 * or one of the single-file capabilities listed below; `_gen/` is generated
 * code, importable by every module. The module graph comes from
 * `deno info --json`, so imports are resolved exactly as Deno resolves them.
 *
 *   deno run -A tools/import_graph.ts
 *
 * @module
 */

import { rustImportGraph } from "./_rust_imports.ts";

/** The kernel's foundation modules: below every capability folder. */
const RUST_FOUNDATION = [
  "boundary",
  "error",
  "events",
  "handles",
  "identity",
  "kernel",
  "memory",
  "proto",
  "ring",
];
/** The kernel's top: they may import anything, nothing may import them. */
const RUST_TOP = ["crate", "lifecycle", "diagnostics"];

/** Capabilities that are one file at the top of `bindings/`. */
const SINGLE_FILE_CAPABILITIES = ["buffers.ts", "guard.ts"];
/** The composition root: it may import everything; nothing in `bindings/` may import it. */
const ROOT = "kernel.ts";
/** Files outside `bindings/` that bindings modules may import. */
const ALLOWED_OUTSIDE = ["release/manifest.json"];

const rootUrl = new URL("../", import.meta.url);
const bindingsUrl = new URL("bindings/", rootUrl).href;

type Kind = "generated" | "root" | "capability" | "foundation";

/** A path relative to `bindings/`, e.g. `store/store.ts`. */
function kindOf(path: string): Kind {
  if (path.startsWith("_gen/")) return "generated";
  if (path === ROOT) return "root";
  if (path.includes("/") || SINGLE_FILE_CAPABILITIES.includes(path)) return "capability";
  return "foundation";
}

/** Every `.ts` file under `dir`, as paths relative to it. */
function listModules(dir: URL, prefix = ""): string[] {
  const paths: string[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    if (entry.isDirectory) {
      paths.push(...listModules(new URL(`${entry.name}/`, dir), `${prefix}${entry.name}/`));
    } else if (entry.name.endsWith(".ts")) {
      paths.push(`${prefix}${entry.name}`);
    }
  }
  return paths;
}

interface DenoInfo {
  modules: {
    specifier: string;
    dependencies?: { code?: { specifier: string }; type?: { specifier: string } }[];
  }[];
}

/** Every local import (code and type) of every module reachable from `paths`. */
async function importsOf(paths: string[]): Promise<Map<string, Set<string>>> {
  const edges = new Map<string, Set<string>>();
  for (const path of paths) {
    const url = new URL(path, bindingsUrl).href;
    if (edges.has(url)) continue; // already in the graph of an earlier module
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", url],
      cwd: new URL(".", rootUrl),
      stderr: "inherit",
    }).output();
    if (!output.success) throw new Error(`deno info ${path} failed`);
    const info: DenoInfo = JSON.parse(new TextDecoder().decode(output.stdout));
    for (const module of info.modules) {
      if (!module.specifier.startsWith("file:")) continue;
      const targets = new Set<string>();
      for (const dependency of module.dependencies ?? []) {
        for (const target of [dependency.code?.specifier, dependency.type?.specifier]) {
          if (target?.startsWith("file:")) targets.add(target);
        }
      }
      edges.set(module.specifier, targets);
    }
  }
  return edges;
}

/**
 * Import cycles, found depth first: every import that leads back to a module
 * still on the current path closes one (reported as that loop).
 */
function findCycles(edges: Map<string, Set<string>>): string[][] {
  const state = new Map<string, "on path" | "done">();
  const path: string[] = [];
  const cycles: string[][] = [];
  const visit = (module: string): void => {
    state.set(module, "on path");
    path.push(module);
    for (const next of edges.get(module) ?? []) {
      if (state.get(next) === "on path") cycles.push([...path.slice(path.indexOf(next)), next]);
      else if (!state.has(next)) visit(next);
    }
    path.pop();
    state.set(module, "done");
  };
  for (const module of [...edges.keys()].sort()) if (!state.has(module)) visit(module);
  return cycles;
}

/** A module's path from the repository root, for messages. */
function relative(url: string): string {
  return url.slice(rootUrl.href.length);
}

const modules = listModules(new URL(bindingsUrl));
const edges = await importsOf(modules);
const problems: string[] = [];

for (const [from, targets] of edges) {
  if (!from.startsWith(bindingsUrl)) continue;
  const fromKind = kindOf(from.slice(bindingsUrl.length));
  for (const to of targets) {
    if (!to.startsWith(bindingsUrl)) {
      if (!ALLOWED_OUTSIDE.includes(to.slice(rootUrl.href.length))) {
        problems.push(`${relative(from)} imports ${relative(to)}, outside bindings/`);
      }
      continue;
    }
    const toKind = kindOf(to.slice(bindingsUrl.length));
    if (toKind === "root") {
      problems.push(`${relative(from)} imports the composition root ${relative(to)}`);
    } else if (fromKind === "foundation" && toKind === "capability") {
      problems.push(`foundation module ${relative(from)} imports capability ${relative(to)}`);
    }
  }
}

for (const cycle of findCycles(edges)) {
  problems.push(`import cycle: ${cycle.map(relative).join(" → ")}`);
}

const rust = rustImportGraph(rootUrl);
const rustLayer = (module: string) =>
  RUST_TOP.includes(module)
    ? "top"
    : RUST_FOUNDATION.includes(module)
    ? "foundation"
    : "capability";
const rustFile = (module: string) => rust.modules.find(({ name }) => name === module)?.file;
for (const [from, targets] of rust.edges) {
  for (const to of targets) {
    const [fromLayer, toLayer] = [rustLayer(from), rustLayer(to)];
    if (toLayer === "top" || (fromLayer === "foundation" && toLayer === "capability")) {
      problems.push(`${fromLayer} module ${rustFile(from)} imports ${toLayer} ${rustFile(to)}`);
    }
  }
}
for (const cycle of findCycles(rust.edges)) {
  problems.push(`import cycle: ${cycle.map(rustFile).join(" → ")}`);
}

if (problems.length > 0) {
  for (const problem of problems) console.error(`import_graph: ${problem}`);
  Deno.exit(1);
}
console.log(
  `import_graph: ${rust.modules.length} kernel and ${modules.length} bindings modules, ` +
    "no cycles, imports point down",
);
