/**
 * The `Deno.Command` anchor of `bench/runtimes.ts`: a plain `deno run` that
 * echoes whatever arrives on stdin to stdout.
 *
 * @module
 */

const buffer = new Uint8Array(64 * 1024);
for (;;) {
  const read = await Deno.stdin.read(buffer);
  if (read === null) break;
  let written = 0;
  while (written < read) written += await Deno.stdout.write(buffer.subarray(written, read));
}
