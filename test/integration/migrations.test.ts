/**
 * Migrations on an empty database (not the run's migrated template): they
 * create the schema, a second run applies nothing, concurrent runs both
 * succeed; and the schema's CHECK constraints reject impossible rows.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, test } from "vitest";
import { MIGRATIONS, migrate } from "../../src/storage/data-source.js";

const TABLES = [
  "batches",
  "files",
  "model_limits",
  "request_events",
  "request_templates",
  "requests",
];

/** A URL for `database` on the test server. */
function urlOf(database: string): string {
  const u = new URL(inject("adminUrl"));
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

async function withAdmin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: inject("adminUrl") });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Empty databases made by this file; the run's prefix lets teardown drop leftovers too. */
const made: string[] = [];

async function emptyDatabase(): Promise<string> {
  const name = `${inject("dbPrefix")}mig_${randomBytes(4).toString("hex")}`;
  await withAdmin((c) => c.query(`CREATE DATABASE ${c.escapeIdentifier(name)}`));
  made.push(name);
  return urlOf(name);
}

afterAll(async () => {
  await withAdmin(async (c) => {
    for (const name of made) {
      await c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(name)} WITH (FORCE)`);
    }
  });
});

async function tablesOf(url: string): Promise<string[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const { rows } = await c.query<{ table_name: string }>(
      `SELECT table_name FROM information_schema.tables
       WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name`,
    );
    return rows.map((r) => r.table_name);
  } finally {
    await c.end();
  }
}

describe("migrate()", () => {
  test("creates the schema on an empty database; a second run applies nothing", async () => {
    const url = await emptyDatabase();
    expect(await tablesOf(url)).toEqual([]);

    const applied = await migrate(url);
    expect(applied).toEqual(MIGRATIONS.map((m) => new m().name));
    const tables = await tablesOf(url);
    for (const t of TABLES) expect(tables).toContain(t);
    expect(tables).toContain("migrations");

    expect(await migrate(url)).toEqual([]);
    expect(await tablesOf(url)).toEqual(tables);
  });

  test("two concurrent runs both succeed, and the migrations are applied once", async () => {
    const url = await emptyDatabase();
    const [a, b] = await Promise.all([migrate(url), migrate(url)]);
    // One applied everything, the other found nothing to do.
    expect([a, b].map((r) => r.length).sort()).toEqual([0, MIGRATIONS.length]);
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      const { rows } = await c.query(`SELECT name FROM migrations`);
      expect(rows).toHaveLength(MIGRATIONS.length);
    } finally {
      await c.end();
    }
    for (const t of TABLES) expect(await tablesOf(url)).toContain(t);
  });
});

describe("CHECK constraints", () => {
  let c: pg.Client;
  let batchId: string;

  beforeAll(async () => {
    const url = await emptyDatabase();
    await migrate(url);
    c = new pg.Client({ connectionString: url });
    await c.connect();
    const { rows } = await c.query<{ id: string }>(
      `INSERT INTO batches (completion_window, max_retries, initial_backoff_ms, max_backoff_ms,
         total_count, pending_count, expires_at, finished_at)
       VALUES ('24h', 1, 1, 1, 0, 0, now() + interval '1 day', now()) RETURNING id`,
    );
    // (A batch with no requests is finished; inserting requests touches no counter.)
    batchId = rows[0]!.id;
    // Savepoints need a transaction; nothing below is kept.
    await c.query("BEGIN");
  });
  afterAll(async () => {
    await c?.query("ROLLBACK").catch(() => undefined);
    await c?.end();
  });

  let line = 0;

  /** Inserts a request of the batch with `columns`; resolves to the error's constraint, or "ok". */
  async function insertRequest(columns: Record<string, unknown>): Promise<string> {
    const all: Record<string, unknown> = {
      batch_id: batchId,
      line: ++line,
      endpoint: "http://x",
      method: "POST",
      path: "/v",
      body: "{}",
      model: "m",
      ...columns,
    };
    const names = Object.keys(all);
    await c.query("SAVEPOINT s");
    try {
      await c.query(
        `INSERT INTO requests (${names.join(", ")}) VALUES (${names.map((_, i) => `$${i + 1}`).join(", ")})`,
        Object.values(all),
      );
      await c.query("ROLLBACK TO SAVEPOINT s");
      return "ok";
    } catch (e) {
      await c.query("ROLLBACK TO SAVEPOINT s");
      const err = e as { code?: string; constraint?: string };
      expect(err.code).toBe("23514"); // check_violation
      return err.constraint ?? "?";
    }
  }

  const done = { finished_at: new Date() };
  const lease = { lease_token: 1, lease_holder: "d1", lease_expires_at: new Date(), attempt: 1 };

  test("well-formed rows are accepted", async () => {
    expect(await insertRequest({ state: "pending" })).toBe("ok");
    expect(await insertRequest({ state: "leased", ...lease })).toBe("ok");
    expect(
      await insertRequest({
        state: "completed",
        response_status: 200,
        response_body: "{}",
        ...done,
      }),
    ).toBe("ok");
    expect(
      await insertRequest({
        state: "failed",
        error_code: "http_error",
        error_message: "x",
        ...done,
      }),
    ).toBe("ok");
  });

  test.each([
    [
      "a completed request without a response",
      { state: "completed", ...done },
      "requests_completed_has_response",
    ],
    [
      "a completed request with an error",
      { state: "completed", response_status: 200, response_body: "{}", error_code: "x", ...done },
      "requests_completed_has_response",
    ],
    ["a pending request with a lease", { state: "pending", ...lease }, "requests_lease_iff_leased"],
    [
      "a leased request without a lease",
      { state: "leased", lease_token: 1, attempt: 1 },
      "requests_lease_iff_leased",
    ],
    [
      "a leased request without a token",
      { ...lease, state: "leased", lease_token: null },
      "requests_leased_has_token",
    ],
    [
      "a leased request never attempted",
      { ...lease, state: "leased", attempt: 0 },
      "requests_leased_attempted",
    ],
    [
      "a failed request without an error",
      { state: "failed", ...done },
      "requests_failure_has_error",
    ],
    [
      "a canceled request without an error",
      { state: "canceled", ...done },
      "requests_failure_has_error",
    ],
    [
      "a terminal request without finished_at",
      { state: "failed", error_code: "x", error_message: "y" },
      "requests_finished_iff_terminal",
    ],
    [
      "a pending request with finished_at",
      { state: "pending", ...done },
      "requests_finished_iff_terminal",
    ],
    [
      "a leased request with not_before",
      { ...lease, state: "leased", not_before: new Date() },
      "requests_not_before_only_pending",
    ],
    ["an unknown state", { state: "running" }, "requests_state_check"],
    ["line 0", { state: "pending", line: 0 }, "requests_line_check"],
  ])("rejects %s", async (_name, columns, constraint) => {
    expect(await insertRequest(columns)).toBe(constraint);
  });

  test("batch counters must add up, and finished_at must match them", async () => {
    const insert = (counts: string, finished: boolean) =>
      c
        .query(
          `SAVEPOINT b; INSERT INTO batches (completion_window, max_retries, initial_backoff_ms,
             max_backoff_ms, expires_at, total_count, pending_count, completed_count, finished_at)
           VALUES ('1h', 0, 0, 0, now(), ${counts}, ${finished ? "now()" : "NULL"})`,
        )
        .then(
          async () => {
            await c.query("ROLLBACK TO SAVEPOINT b");
            return "ok";
          },
          async (e: { constraint?: string }) => {
            await c.query("ROLLBACK TO SAVEPOINT b");
            return e.constraint;
          },
        );
    expect(await insert("3, 1, 2", false)).toBe("ok");
    expect(await insert("3, 0, 3", true)).toBe("ok");
    expect(await insert("3, 1, 1", false)).toBe("batches_counts_add_up");
    expect(await insert("3, 1, 2", true)).toBe("batches_finished_iff_all_terminal");
    expect(await insert("3, 0, 3", false)).toBe("batches_finished_iff_all_terminal");
    expect(await insert("1, -1, 2", false)).toBe("batches_pending_count_check");
  });
});
