/**
 * A tiny downloader that behaves like `@denosaurs/plug` 1.1 where it matters
 * here (plug itself cannot be installed on these machines): it fetches
 * `<url><prefix><name><suffix>.<ext>` and caches it under
 * `<plugDir>/<sha256 of the URL>.<ext>`, writing the file IN PLACE (truncate,
 * then stream), so two processes downloading at once overwrite each other's
 * file, as plug's do. `cache: "only"` never fetches.
 *
 * @module
 */

import type { DownloadRequest } from "../bindings/_loader.ts";
import { EXTENSIONS, PREFIXES, type ReleaseArch, sha256Hex } from "../bindings/_artifact.ts";

/** A plug-like downloader caching in `plugDir`. */
export function plugLikeDownloader(plugDir: string): (request: DownloadRequest) => Promise<string> {
  return async (request) => {
    const os = Deno.build.os as keyof typeof PREFIXES;
    const arch = Deno.build.arch as ReleaseArch;
    const file = `${PREFIXES[os]}${request.name}${request.suffixes[arch]}.${EXTENSIONS[os]}`;
    const url = `${request.url}${file}`;
    const key = await sha256Hex(new TextEncoder().encode(url));
    const path = `${plugDir}/${key}.${EXTENSIONS[os]}`;
    const exists = await Deno.stat(path).then(() => true, () => false);
    if (request.cache === "only") {
      if (!exists) throw new Error(`${url} is not in the cache`);
      return path;
    }
    if (exists && request.cache === "use") return path;
    const response = await fetch(url);
    if (!response.ok || response.body === null) {
      await response.body?.cancel();
      throw new Error(`${url}: ${response.status}`);
    }
    await Deno.mkdir(plugDir, { recursive: true });
    using out = await Deno.open(path, { write: true, create: true, truncate: true });
    for await (const chunk of response.body) {
      for (let written = 0; written < chunk.length;) {
        written += await out.write(chunk.subarray(written));
      }
    }
    return path;
  };
}
