/**
 * Per-test-file databases, cloned from the run's migrated template (see ./global-setup.ts).
 * Each call makes a new database, so test files (and tests) can run in parallel.
 */
import { randomBytes } from "node:crypto";
import type pg from "pg";
import { afterAll, beforeAll, inject } from "vitest";
import { type Db, transaction } from "../../src/storage/db.js";
import { admin, withDatabase } from "./pg-admin.js";

/** A throw-away migrated database. */
export interface TestDatabase {
  url: string;
  name: string;
  /** `DROP DATABASE … WITH (FORCE)`: open connections are ended. Idempotent. */
  drop(): Promise<void>;
}

/** SQLSTATE 55006 object_in_use: "source database … is being accessed by other users". */
const OBJECT_IN_USE = "55006";
const CREATE_ATTEMPTS = 20;
const CREATE_RETRY_MS = 100;
/** How long a drop waits for connections that are closing anyway (20 × 25 ms). */
const QUIET_POLLS = 20;
const QUIET_POLL_MS = 25;

/** Creates a new database from the migrated template. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = inject("adminUrl");
  const templateDb = inject("templateDb");
  const name = `${inject("dbPrefix")}${randomBytes(6).toString("hex")}`;
  await admin(adminUrl, async (c) => {
    const sql = `CREATE DATABASE ${c.escapeIdentifier(name)} TEMPLATE ${c.escapeIdentifier(templateDb)}`;
    // The template accepts no connections, so a clash means someone (psql?) was let in anyway.
    for (let attempt = 1; ; attempt++) {
      try {
        await c.query(sql);
        return;
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code !== OBJECT_IN_USE || attempt >= CREATE_ATTEMPTS) throw err;
        await new Promise((r) => setTimeout(r, CREATE_RETRY_MS));
      }
    }
  });
  let dropped: Promise<void> | undefined;
  return {
    url: withDatabase(adminUrl, name),
    name,
    drop: () => {
      dropped ??= admin(adminUrl, async (c) => {
        // A pool's end() resolves before its sockets have said goodbye: a
        // connection still closing when FORCE terminates it receives FATAL
        // 57P01 with no listener left, an unhandled error that fails the run.
        // Give closing connections a moment to go; FORCE ends the rest.
        for (let i = 0; i < QUIET_POLLS; i++) {
          const { rows } = await c.query<{ n: number }>(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1",
            [name],
          );
          if (rows[0]!.n === 0) break;
          await new Promise((r) => setTimeout(r, QUIET_POLL_MS));
        }
        await c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(name)} WITH (FORCE)`);
      });
      return dropped;
    },
  };
}

/**
 * One database for the calling test file: created in `beforeAll`, dropped in `afterAll`.
 * Read `.url` / `.name` inside tests or hooks, not at module level.
 */
export function useTestDatabase(): { readonly url: string; readonly name: string } {
  let db: TestDatabase | undefined;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });
  const current = (): TestDatabase => {
    if (db === undefined)
      throw new Error("useTestDatabase(): the database exists only once beforeAll ran");
    return db;
  };
  return {
    get url() {
      return current().url;
    },
    get name() {
      return current().name;
    },
  };
}

/**
 * What storage functions need of a Db (a statement, a transaction), over a
 * plain pg pool: for tests that read through them without a control plane.
 */
export function poolQueries(pool: pg.Pool): Pick<Db, "query" | "tx"> {
  return {
    query: ((text: string, params?: unknown[]) => pool.query(text, params)) as Db["query"],
    tx: (fn) => transaction(pool, fn),
  };
}
