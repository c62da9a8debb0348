import { readFile } from "node:fs/promises";
import { expect, test } from "vitest";

/**
 * A client command (`submit`, `watch`, `results`, …) runs in a process of its
 * own, and loading the servers cost it ~0.4 s of CPU at start (0.64 s against
 * 0.24 s): src/cli/server-commands.ts registers the server commands with
 * type-only imports and loads ./server-run.ts when one of them runs.
 */
test("the server commands' registration loads no module but by type", async () => {
  const src = await readFile(new URL("../../src/cli/server-commands.ts", import.meta.url), "utf8");
  const valueImports = [...src.matchAll(/^import\s+(?!type\s)[^;]*?from\s+"([^"]+)"/gms)].map(
    (m) => m[1],
  );
  expect(valueImports).toEqual([]);
  expect(src).toContain('import("./server-run.js")');
});
