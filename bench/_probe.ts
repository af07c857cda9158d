import { Kernel } from "../mod.ts";
const dir = Deno.makeTempDirSync();
const kernel = await Kernel.open({
  libraryPath: Deno.env.get("KREPIS_LIBRARY_PATH"),
  dataDir: dir,
});
const value = new Uint8Array(100).fill(42);
for (const conc of [16]) {
  const total = 6000;
  let next = 0;
  const t = performance.now();
  await Promise.all(Array.from({ length: conc }, async () => {
    while (next < total) {
      const n = next++;
      await kernel.store.commit(
        Array.from(
          { length: 10 },
          (_, k) => ({
            type: "put" as const,
            key: `k${String((n * 10 + k) % 20000).padStart(15, "0")}`,
            value,
          }),
        ),
      );
    }
  }));
  const s = kernel.stats().store!;
  console.log(
    conc,
    Math.round(total / ((performance.now() - t) / 1000)),
    "commits/s",
    (s.commits / s.flushes).toFixed(1),
  );
}
await kernel.close();
