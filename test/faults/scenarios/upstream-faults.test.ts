/**
 * Faults of the upstream, mixed into one batch over both models: connection
 * resets mid-body, bodies that drip slower than the dispatchers' total
 * timeout, hangs past the first-byte timeout (each on a first attempt, then
 * answered, or on every attempt), 400s, bodies with NUL bytes (raw, and
 * `\u0000` escapes in valid JSON), and two storms that hit whatever arrives
 * while they last: 500s, then 429s with Retry-After. Every request ends once,
 * with the outcome its fault allows. Then a batch whose bodies are 20,000-deep
 * JSON arrays: recorded, and their results lines readable.
 */
import type pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../helpers/db.js";
import type { Delivery, Step } from "../../helpers/upstream.js";
import { Fleet, FULL, MODELS, pool, unexpectedExits } from "../fleet.js";
import { verifyBatch } from "../verify.js";

const N = FULL ? 3000 : 300;
/** Faults by kind; a request's kind comes from its index (see `kindOf`). */
const KINDS = {
  "reset-once": { first: { resetAfterBytes: 10 }, outcome: "completed" },
  "reset-always": { always: { resetAfterBytes: 10 }, outcome: "failed" },
  "drip-once": { first: { dripMs: 300, dripChunks: 10 }, outcome: "completed" },
  "hang-once": { first: { hang: true }, outcome: "completed" },
  "status-400": { always: { status: 400, body: '{"error":"bad"}' }, outcome: "failed" },
  "status-500-always": { always: { status: 500, body: "oops" }, outcome: "failed" },
  "nul-raw": { always: { body: '{"text":"a\u0000b"}' }, outcome: "either" },
  "nul-escaped": { always: { body: '{"text":"a\\u0000b"}' }, outcome: "either" },
} as const satisfies Record<
  string,
  { first?: Step; always?: Step; outcome: "completed" | "failed" | "either" }
>;
type Kind = keyof typeof KINDS | "plain";
const KIND_NAMES = Object.keys(KINDS) as Array<keyof typeof KINDS>;

/** Every EVERY-th request of each model has a fault, each kind in turn; the rest are plain. */
const EVERY = FULL ? 25 : 5;
function kindOf(i: number): Kind {
  const j = i % 4 === 0 ? i / 4 : i - Math.floor(i / 4) - 1; // index within its model
  return j % EVERY === 0 ? KIND_NAMES[(j / EVERY) % KIND_NAMES.length]! : "plain";
}

let db: TestDatabase;
let fleet: Fleet;
let sql: pg.Pool;

beforeAll(async () => {
  db = await createTestDatabase();
  sql = pool(db.url);
  await Fleet.start(
    {
      controlPlane: { kind: "control-plane", databaseUrl: db.url },
      dispatcherArgs: ["--first-byte-timeout", "1s", "--total-timeout", "1500ms"],
    },
    (f) => {
      fleet = f; // at once: afterAll closes it even if this hook times out
    },
  );
});
afterAll(async () => {
  await fleet?.close();
  await sql?.end();
  await db?.drop();
});

test("resets, drips, hangs, 400s, 500 and 429 storms, NUL bodies: each request ends once, the limits held", async () => {
  const { upstream } = fleet;
  const items = Array.from({ length: N }, (_, i) => ({
    customId: `r-${i}`,
    model: i % 4 === 0 ? MODELS[0].model : MODELS[1].model,
  }));
  const kinds = new Map(items.map((it, i) => [it.customId, kindOf(i)]));
  // Storms: from the delivery that crosses 30 % (500s) / 60 % (429s) of N, for a while.
  const storms = { "500": { at: 0, ms: 500 }, "429": { at: 0, ms: 800 } };
  const stormed = { "500": 0, "429": 0 };
  upstream.respond = (d: Delivery): Step => {
    const now = Date.now();
    if (storms["500"].at === 0 && d.seq >= N * 0.3) storms["500"].at = now;
    if (storms["429"].at === 0 && d.seq >= N * 0.6) storms["429"].at = now;
    for (const code of ["500", "429"] as const) {
      const s = storms[code];
      if (s.at > 0 && now < s.at + s.ms) {
        stormed[code]++;
        return code === "500"
          ? { status: 500, body: '{"error":"storm"}' }
          : { status: 429, body: '{"error":"slow down"}', headers: { "retry-after": "1" } };
      }
    }
    const kind = kinds.get(d.customId) ?? "plain";
    if (kind !== "plain") {
      const f: { first?: Step; always?: Step } = KINDS[kind];
      if (f.always) return f.always;
      if (f.first && d.attempt === 1) return f.first;
    }
    return { delayMs: 10 + Math.floor(Math.random() * 40) };
  };

  const startedAt = Date.now();
  const batchId = await fleet.createBatch(items, { maxRetries: 6, initialBackoffMs: 100 });
  const { lines } = await verifyBatch({
    scenario: "upstream faults (resets, drips, hangs, 400, 500/429 storms, NUL bodies)",
    api: fleet.api,
    sql,
    upstream,
    batchId,
    items,
    startedAt,
    extra: { stormed },
  });

  // Each kind's outcome, as its fault allows.
  const outcome = new Map(lines.map((l) => [l.customId, l]));
  const byKind: Record<string, { completed: number; failed: number }> = {};
  const wrong: string[] = [];
  for (const [id, kind] of kinds) {
    const l = outcome.get(id)!;
    const got = l.kind === "output" ? "completed" : "failed";
    const tally = byKind[kind] ?? { completed: 0, failed: 0 };
    byKind[kind] = tally;
    tally[got]++;
    const want = kind === "plain" ? "completed" : KINDS[kind].outcome;
    if (want !== "either" && want !== got) wrong.push(`${id} (${kind}): ${JSON.stringify(l.line)}`);
  }
  console.log(`FAULTS-KINDS ${JSON.stringify(byKind)}`);
  expect(wrong.slice(0, 5), `${wrong.length} requests with the wrong outcome`).toEqual([]);
  expect(stormed["500"]).toBeGreaterThan(0);
  expect(stormed["429"]).toBeGreaterThan(0);
  expect(unexpectedExits([...fleet.dispatchers, fleet.controlPlane])).toEqual([]);
});

/** A JSON array nested `depth` deep: valid JSON that recursive code cannot walk. */
const deepJson = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`;

test("20,000-deep JSON array bodies: recorded once, and their results lines can be read", async () => {
  const { upstream } = fleet;
  const items = Array.from({ length: 40 }, (_, i) => ({
    customId: `deep-${i}`,
    model: i % 2 === 0 ? MODELS[0].model : MODELS[1].model,
  }));
  for (const { model } of MODELS) upstream.resetPeak(model);
  // Every other request answers a 20,000-deep array; the rest plain JSON.
  upstream.respond = (d) =>
    Number(d.customId.split("-")[1]) % 2 === 0
      ? { body: deepJson(20_000) }
      : { delayMs: 10 + Math.floor(Math.random() * 40) };
  const startedAt = Date.now();
  const batchId = await fleet.createBatch(items);
  const { lines } = await verifyBatch({
    scenario: "upstream: 20,000-deep JSON bodies",
    api: fleet.api,
    sql,
    upstream,
    batchId,
    items,
    startedAt,
  });
  expect(lines.filter((l) => l.kind === "output")).toHaveLength(items.length);
});
