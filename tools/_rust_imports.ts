/**
 * The import graph of the kernel's Rust sources (`ffi/src`), for
 * `tools/import_graph.ts`: one node per source file (`store/commit.rs` is
 * `store::commit`, `store/mod.rs` is `store`), one edge per module a file
 * names through `crate::`, `super::` or `self::` paths — in `use` items
 * (brace groups expanded) and inline. Each path is resolved to the longest
 * prefix that is a file module, so `crate::store::keys::data_key` is an edge
 * to `store::keys` and `super::Store` in `store/commit.rs` an edge to
 * `store` (its `mod.rs`). Unit-test modules (`#[cfg(test)] mod tests`, at the
 * end of a file by convention) are left out: tests may reach anywhere.
 *
 * @module
 */

/** One Rust source file as a module of the crate. */
export interface RustModule {
  /** `store::commit`; the crate root (`lib.rs`) is `crate`. */
  name: string;
  /** Path from the repository root, for messages. */
  file: string;
}

/** Module name of a file path relative to `ffi/src` (`store/mod.rs` → `store`). */
function moduleName(path: string): string {
  if (path === "lib.rs") return "crate";
  return path.replace(/\.rs$/, "").replace(/\/mod$/, "").replaceAll("/", "::");
}

function listRustFiles(dir: URL, prefix = ""): string[] {
  const paths: string[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    if (entry.isDirectory) {
      paths.push(...listRustFiles(new URL(`${entry.name}/`, dir), `${prefix}${entry.name}/`));
    } else if (entry.name.endsWith(".rs")) {
      paths.push(`${prefix}${entry.name}`);
    }
  }
  return paths;
}

/**
 * Source without comments, string and char literals (blanked, so offsets
 * stay) and without the trailing unit-test module.
 */
function code(source: string): string {
  let out = "";
  let i = 0;
  const blank = (end: number) => {
    out += source.slice(i, end).replace(/[^\n]/g, " ");
    i = end;
  };
  while (i < source.length) {
    const rest = source.slice(i, i + 3);
    if (rest.startsWith("//")) {
      const end = source.indexOf("\n", i);
      blank(end < 0 ? source.length : end);
    } else if (rest.startsWith("/*")) {
      const end = source.indexOf("*/", i + 2);
      blank(end < 0 ? source.length : end + 2);
    } else if (/^r#*"/.test(source.slice(i, i + 8)) && !/\w/.test(source[i - 1] ?? "")) {
      const hashes = source.slice(i + 1).match(/^#*/)![0];
      const end = source.indexOf(`"${hashes}`, i + 2 + hashes.length);
      blank(end < 0 ? source.length : end + 1 + hashes.length);
    } else if (source[i] === '"') {
      let end = i + 1;
      while (end < source.length && source[end] !== '"') end += source[end] === "\\" ? 2 : 1;
      blank(end + 1);
    } else if (source[i] === "'") {
      // A char literal ('x', '\n', '\u{1F600}'); otherwise a lifetime.
      const literal = source.slice(i).match(/^'(?:\\u\{[0-9a-fA-F]+\}|\\.[^']*|[^'\\])'/);
      if (literal) blank(i + literal[0].length);
      else out += source[i++];
    } else {
      out += source[i++];
    }
  }
  return out.replace(/#\[cfg\(test\)\]\s*mod tests\s*\{[\s\S]*$/, "");
}

/** Flattens a use tree (`a::{b, c::{d, e}}`) into its paths (`a::b`, `a::c::d`, …). */
export function expandUseTree(tree: string): string[] {
  const text = tree.replace(/\s+/g, "");
  const open = text.indexOf("{");
  if (open < 0) return [text.replace(/::self$/, "")];
  const prefix = text.slice(0, open);
  const inner = text.slice(open + 1, text.lastIndexOf("}"));
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= inner.length; i++) {
    const char = inner[i];
    if (char === "{") depth++;
    if (char === "}") depth--;
    if ((char === "," && depth === 0) || i === inner.length) {
      const part = inner.slice(start, i);
      if (part !== "") {
        parts.push(...expandUseTree(part === "self" ? prefix.replace(/::$/, "") : prefix + part));
      }
      start = i + 1;
    }
  }
  return parts;
}

/**
 * Turns a path used in `from` into absolute segments: `crate::`, `super::`
 * and `self::` paths, and paths that start with a child module of `from`
 * (`commit::start` in `store/mod.rs`). Other paths (std, tokio, locals) are
 * `null`.
 */
function absolute(
  from: string,
  path: string,
  known: Set<string>,
  inlineDepth: number,
): string[] | null {
  const segments = path.split("::").filter((segment) => segment !== "");
  // The module a file's `self` names, and the chain of its parents.
  let base = from === "crate" ? [] : from.split("::");
  if (segments[0] === "crate") return segments.slice(1);
  if (known.has([...base, segments[0]].join("::"))) return [...base, ...segments];
  if (segments[0] !== "self" && segments[0] !== "super") return null;
  // Inside `mod arch { … }` of a file, the first `super` is still that file.
  let inline = inlineDepth;
  while (segments[0] === "self" || segments[0] === "super") {
    if (segments.shift() === "super" && inline-- <= 0) base = base.slice(0, -1);
  }
  return [...base, ...segments];
}

/** The [start, end) offsets of every inline `mod name { … }` block of `text`. */
function inlineModules(text: string): [number, number][] {
  const blocks: [number, number][] = [];
  for (const match of text.matchAll(/\bmod\s+\w+\s*\{/g)) {
    let depth = 0;
    for (let i = match.index + match[0].length - 1; i < text.length; i++) {
      if (text[i] === "{") depth++;
      if (text[i] === "}" && --depth === 0) {
        blocks.push([match.index, i + 1]);
        break;
      }
    }
  }
  return blocks;
}

/** Every module of `ffi/src` and the modules each one imports. */
export function rustImportGraph(root: URL): {
  modules: RustModule[];
  edges: Map<string, Set<string>>;
} {
  const srcUrl = new URL("ffi/src/", root);
  const files = listRustFiles(srcUrl);
  const modules = files.map((path) => ({ name: moduleName(path), file: `ffi/src/${path}` }));
  const known = new Set(modules.map((module) => module.name));
  const edges = new Map<string, Set<string>>();
  for (const [index, path] of files.entries()) {
    const from = modules[index].name;
    const text = code(Deno.readTextFileSync(new URL(path, srcUrl)));
    const blocks = inlineModules(text);
    const depthAt = (offset: number) =>
      blocks.filter(([start, end]) => start <= offset && offset < end).length;
    const paths: [string, number][] = [];
    for (const match of text.matchAll(/\buse\s+([^;]+);/g)) {
      for (const path of expandUseTree(match[1])) paths.push([path, depthAt(match.index)]);
    }
    // Inline paths; a path that starts after `::` is the tail of a longer one.
    const inlineText = text.replace(/\buse\s+[^;]+;/g, (item) => " ".repeat(item.length));
    for (const match of inlineText.matchAll(/(?<!::)\b\w+(?:::\w+)+/g)) {
      paths.push([match[0], depthAt(match.index)]);
    }
    const targets = new Set<string>();
    for (const [used, inlineDepth] of paths) {
      const segments = absolute(from, used, known, inlineDepth);
      if (segments === null) continue;
      // The longest prefix that is a file module is the module depended on.
      for (let length = segments.length; length >= 0; length--) {
        const name = length === 0 ? "crate" : segments.slice(0, length).join("::");
        if (known.has(name)) {
          if (name !== from) targets.add(name);
          break;
        }
      }
    }
    edges.set(from, targets);
  }
  return { modules, edges };
}
