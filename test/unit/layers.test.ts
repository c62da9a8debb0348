/**
 * Layers point down: a module of src/ (its first folder, or a file at the top
 * of src/) imports only modules of a lower layer, never a peer or a higher
 * one; and a few packages have one importer each. Read from the import and
 * export-from lines (and dynamic imports) of every file, by the TypeScript
 * compiler's own pre-processor.
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import ts from "typescript";
import { describe, expect, test } from "vitest";

const ROOT = path.resolve(import.meta.dirname, "../..");

/**
 * The layers, lowest first. The same order, drawn, is in docs/architecture.md:
 * change both together, and only with a reason.
 */
const LAYERS: readonly (readonly string[])[] = [
  // Leaves: generated code, the logger, the plain-route types, the messages of serve's
  // in-process port; the migrations' SQL.
  ["gen", "logger", "plain-route", "dispatch-port", "migrations"],
  // Pure domain types and rules; the client library over the generated code.
  ["domain", "client"],
  // Configuration, the outbound HTTP executor, who a call runs as (principals, tokens, keys).
  ["config", "http", "auth"],
  // The only door to Postgres.
  ["storage"],
  // Slot grants and claims; metrics (read storage, the fleet, the dispatcher's counters).
  ["leases", "metrics"],
  // The Connect handlers and the server; the dispatcher; the dashboard's route.
  ["api", "dispatcher", "web"],
  // The OpenAI-compatible REST surface: plain routes over the Connect handlers' functions.
  ["openai"],
  // Builds a control plane from the parts.
  ["control-plane"],
  // Entry points.
  ["cli"],
];

/** Packages only one layer's modules may import (STYLE.md: one room per concern). */
const PACKAGE_OWNERS: Record<string, readonly string[]> = {
  pg: ["storage"],
  typeorm: ["storage", "migrations"],
  undici: ["http"],
};

const rank = new Map(LAYERS.flatMap((layer, i) => layer.map((m) => [m, i] as const)));

/** The module of a path relative to the repository: src/<folder>, src/<file>, or migrations. */
function moduleOf(rel: string): string {
  const parts = rel.split(path.sep);
  if (parts[0] === "migrations") return "migrations";
  if (parts[0] !== "src") return `outside:${parts[0]}`;
  return parts.length === 2 ? parts[1]!.replace(/\.[jt]s$/, "") : parts[1]!;
}

function filesUnder(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir), { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))
    .map((f) => path.join(dir, f));
}

interface Edge {
  file: string;
  from: string;
  to: string;
  specifier: string;
}

/** Every import of our own modules, and every package import, of src/ and migrations/. */
function imports(): { local: Edge[]; packages: Edge[] } {
  const local: Edge[] = [];
  const packages: Edge[] = [];
  for (const file of [...filesUnder("src"), ...filesUnder("migrations")]) {
    if (file.startsWith(path.join("src", "gen") + path.sep)) continue;
    const from = moduleOf(file);
    const info = ts.preProcessFile(readFileSync(path.join(ROOT, file), "utf8"), true, true);
    for (const { fileName: specifier } of info.importedFiles) {
      if (specifier.startsWith(".")) {
        const target = path.relative(ROOT, path.resolve(ROOT, path.dirname(file), specifier));
        local.push({ file, from, to: moduleOf(target), specifier });
      } else if (!specifier.startsWith("node:")) {
        const name = specifier.startsWith("@")
          ? specifier.split("/").slice(0, 2).join("/")
          : specifier.split("/")[0]!;
        packages.push({ file, from, to: name, specifier });
      }
    }
  }
  return { local, packages };
}

const graph = imports();

describe("the import graph", () => {
  test("has every module of src/ in a layer", () => {
    const modules = new Set(graph.local.flatMap((e) => [e.from, e.to]));
    const unplaced = [...modules].filter((m) => !rank.has(m));
    expect(unplaced, "modules missing from LAYERS").toEqual([]);
    // The scan reads what it should: a known downward import is seen.
    expect(graph.local.some((e) => e.from === "storage" && e.to === "auth")).toBe(true);
  });

  test("points down only: no import of a peer or of a higher layer", () => {
    const upward = graph.local
      .filter((e) => e.from !== e.to && !(rank.get(e.to)! < rank.get(e.from)!))
      .map(
        (e) =>
          `${e.file}: ${e.from} (layer ${rank.get(e.from)}) imports ${e.specifier} (${e.to}, layer ${rank.get(e.to)})`,
      );
    expect(upward).toEqual([]);
  });

  test("pg, typeorm and undici each have their one importing layer", () => {
    const strays = graph.packages
      .filter((e) => PACKAGE_OWNERS[e.to] !== undefined && !PACKAGE_OWNERS[e.to]!.includes(e.from))
      .map(
        (e) => `${e.file} imports ${e.specifier} (only ${PACKAGE_OWNERS[e.to]!.join(", ")} may)`,
      );
    expect(strays).toEqual([]);
  });
});
