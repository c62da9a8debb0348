/**
 * Vitest global setup: one Postgres server per test run, one migrated template database in
 * it, and `{ adminUrl, templateDb, dbPrefix }` provided to test files (see ./db.ts).
 *
 * The server, in DESIGN §7's order:
 * - `TEST_DATABASE_URL`: an admin URL (superuser, or CREATEDB) of a server you run; only
 *   databases named `fusillade_t_<run>_*` / `fusillade_tpl_<run>` are created and dropped;
 * - `TEST_DATABASE=docker`: a `postgres:15` container (testcontainers);
 * - otherwise an embedded Postgres in a fresh temp dir, removed at teardown. Servers left
 *   by runs that died before their teardown (Ctrl-C, kill -9) are stopped and removed at
 *   the next setup.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { TestProject } from "vitest/node";
import { migrate } from "../../src/storage/data-source.js";
import { startEmbeddedPostgres, stopStaleServer } from "../../src/storage/embedded-postgres.js";
import { admin, withDatabase } from "./pg-admin.js";
import { isAlive } from "./pid.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** URL of a database in the test server, as a user that may create databases. */
    adminUrl: string;
    /** Migrated template; test databases are created from it. */
    templateDb: string;
    /** Names of this run's test databases start with it (teardown drops them all). */
    dbPrefix: string;
  }
}

/** Temp dirs of embedded servers: `fusillade-test-<pid of the process using it>-XXXXXX`. */
const TMP_PREFIX = "fusillade-test-";

interface Server {
  adminUrl: string;
  stop(): Promise<void>;
}

/** Starts the run's server and template; returns the teardown. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const run = randomBytes(4).toString("hex");
  const templateDb = `fusillade_tpl_${run}`;
  const dbPrefix = `fusillade_t_${run}_`;
  const server = await startServer();
  try {
    await admin(server.adminUrl, async (c) => {
      await c.query(`CREATE DATABASE ${c.escapeIdentifier(templateDb)}`);
    });
    await migrate(withDatabase(server.adminUrl, templateDb));
    // No connections to the template from now on: CREATE DATABASE … TEMPLATE needs none.
    await admin(server.adminUrl, (c) =>
      c.query(`ALTER DATABASE ${c.escapeIdentifier(templateDb)} WITH ALLOW_CONNECTIONS false`),
    );
  } catch (err) {
    await dropRunDatabases(server.adminUrl, templateDb, dbPrefix).catch(() => {});
    await server.stop();
    throw err;
  }
  project.provide("adminUrl", server.adminUrl);
  project.provide("templateDb", templateDb);
  project.provide("dbPrefix", dbPrefix);

  return async () => {
    try {
      await dropRunDatabases(server.adminUrl, templateDb, dbPrefix);
    } finally {
      await server.stop();
    }
  };
}

async function startServer(): Promise<Server> {
  const url = process.env["TEST_DATABASE_URL"]?.trim();
  if (url) return { adminUrl: url, stop: async () => {} };

  const kind = process.env["TEST_DATABASE"]?.trim() || "embedded";
  if (kind === "docker") {
    // Loaded only when asked for: testcontainers is slow to import.
    const { PostgreSqlContainer } = await import("@testcontainers/postgresql");
    const container = await new PostgreSqlContainer("postgres:15").start().catch((err) => {
      throw new Error(`TEST_DATABASE=docker: could not start a postgres:15 container: ${err}`, {
        cause: err,
      });
    });
    return {
      adminUrl: container.getConnectionUri(),
      stop: async () => {
        await container.stop();
      },
    };
  }
  if (kind !== "embedded") {
    throw new Error(`TEST_DATABASE must be "docker" or "embedded" (or unset), not "${kind}"`);
  }

  await removeDeadRunsServers();
  const dir = await mkdtemp(path.join(os.tmpdir(), `${TMP_PREFIX}${process.pid}-`));
  try {
    // mkdtemp makes it 0700; as root the server runs as `nobody`, which must get through.
    await chmod(dir, 0o755);
    const pgServer = await startEmbeddedPostgres({
      dataDir: path.join(dir, "pg"),
      database: "postgres",
      ephemeral: true,
      // Test files run in parallel, each with its own pools.
      settings: { max_connections: 300 },
    });
    return {
      adminUrl: pgServer.url,
      stop: async () => {
        await pgServer.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Stops and removes embedded servers of earlier runs whose process is gone (vitest killed
 * before its teardown): dirs `fusillade-test-<pid>-*` in tmpdir, test files' included.
 */
async function removeDeadRunsServers(): Promise<void> {
  for (const name of await readdir(os.tmpdir())) {
    const pid = Number(new RegExp(`^${TMP_PREFIX}(\\d+)-`).exec(name)?.[1]);
    if (!pid || isAlive(pid)) continue;
    const dir = path.join(os.tmpdir(), name);
    for (const dataDir of await clusterDirs(dir, 4)) await stopStaleServer(dataDir).catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

/** Dirs under `dir` (at most `depth` levels down) that hold a postmaster.pid. */
async function clusterDirs(dir: string, depth: number): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  if (entries.some((e) => e.name === "postmaster.pid")) return [dir];
  if (depth === 0) return [];
  const found: string[] = [];
  for (const e of entries) {
    if (e.isDirectory()) found.push(...(await clusterDirs(path.join(dir, e.name), depth - 1)));
  }
  return found;
}

/** Drops the template and every database of this run, connections or not. */
async function dropRunDatabases(adminUrl: string, templateDb: string, dbPrefix: string) {
  await admin(adminUrl, async (c) => {
    const { rows } = await c.query<{ datname: string }>(
      "SELECT datname FROM pg_database WHERE datname = $1 OR starts_with(datname, $2)",
      [templateDb, dbPrefix],
    );
    for (const { datname } of rows) {
      await c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(datname)} WITH (FORCE)`);
    }
  });
}
