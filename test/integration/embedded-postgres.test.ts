import { spawn } from "node:child_process";
import { once } from "node:events";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  type EmbeddedPostgres,
  startEmbeddedPostgres,
} from "../../src/storage/embedded-postgres.js";
import { resolveDatabase } from "../../src/storage/resolve-database.js";
import { createTestDatabase, useTestDatabase } from "../helpers/db.js";

let tmp: string;
const running: { stop(): Promise<void> }[] = [];

beforeAll(async () => {
  // Named like global-setup's dirs, so a later run removes it if this process is killed.
  tmp = await mkdtemp(path.join(os.tmpdir(), `fusillade-test-${process.pid}-`));
  await chmod(tmp, 0o755); // as root the server runs as `nobody`, which must get through
});

afterAll(async () => {
  for (const s of running) await s.stop().catch(() => {});
  await rm(tmp, { recursive: true, force: true });
});

async function start(name: string, extra: { port?: number; log?: (m: string) => void } = {}) {
  const server = await startEmbeddedPostgres({ dataDir: path.join(tmp, name), ...extra });
  running.push(server);
  return server;
}

async function query<R extends pg.QueryResultRow>(
  url: string,
  sql: string,
  params: unknown[] = [],
) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

async function postmasterPid(server: EmbeddedPostgres): Promise<number> {
  const text = await readFile(path.join(server.dataDir, "postmaster.pid"), "utf8");
  return Number(text.split("\n")[0]);
}

/** Running, not a zombie (pid 1 of a container may be slow to reap the orphaned postmaster). */
async function isRunning(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "" && state !== "Z";
}

describe("startEmbeddedPostgres", () => {
  test("creates a cluster on first start and reuses its data on the next", async () => {
    const logs: string[] = [];
    const first = await start("reuse", { log: (m) => logs.push(m) });
    expect(first.url).toMatch(
      new RegExp(`^postgres://postgres:[A-Za-z0-9_-]{32}@127\\.0\\.0\\.1:${first.port}/fusillade$`),
    );
    expect(logs.some((m) => m.startsWith("initdb"))).toBe(true);
    // TCP never trusts: without the password (or with a wrong one) the server refuses.
    const bare = `postgres://postgres@127.0.0.1:${first.port}/fusillade`;
    await expect(query(bare, "SELECT 1")).rejects.toThrow(/password/);
    const wrong = `postgres://postgres:guess@127.0.0.1:${first.port}/fusillade`;
    await expect(query(wrong, "SELECT 1")).rejects.toThrow(/password authentication failed/);
    await query(first.url, "CREATE TABLE kept (v text)");
    await query(first.url, "INSERT INTO kept VALUES ($1)", ["still here"]);
    await first.stop();
    await first.stop(); // idempotent
    await expect(query(first.url, "SELECT 1")).rejects.toThrow();

    logs.length = 0;
    const second = await start("reuse", { log: (m) => logs.push(m) });
    expect(logs.some((m) => m.startsWith("initdb"))).toBe(false);
    expect(second.url.replace(/:\d+\//, ":P/")).toBe(first.url.replace(/:\d+\//, ":P/")); // same password
    expect(await query(second.url, "SELECT v FROM kept")).toEqual([{ v: "still here" }]);
    await second.stop();
  });

  test("a server whose postmaster was SIGKILLed is cleaned up by the next start", async () => {
    const first = await start("killed");
    await query(first.url, "CREATE TABLE kept (v int)");
    await query(first.url, "INSERT INTO kept VALUES (42)");
    const pid = await postmasterPid(first);
    process.kill(pid, "SIGKILL");

    const logs: string[] = [];
    const second = await start("killed", { log: (m) => logs.push(m) });
    expect(logs.some((m) => m.includes("stale"))).toBe(true);
    expect(await query(second.url, "SELECT v FROM kept")).toEqual([{ v: 42 }]);
    await second.stop();
  });

  test("a server still running on the dir is stopped; the old handle's stop() spares the new one", async () => {
    const first = await start("taken-over");
    const firstPid = await postmasterPid(first);
    const second = await start("taken-over");
    expect(await isRunning(firstPid)).toBe(false);
    await first.stop();
    expect(await query(second.url, "SELECT 1 AS one")).toEqual([{ one: 1 }]);
    await second.stop();
  });

  test("a server whose Fusillade process is alive is not taken over; once it is gone, it is", async () => {
    const first = await start("owned");
    // Another live Fusillade (a node process) claims the dir, as a second `serve` would find it.
    const owner = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], {
      stdio: "ignore",
    });
    await once(owner, "spawn");
    try {
      await writeFile(path.join(first.dataDir, "fusillade.owner"), `${owner.pid}\n`);
      const refused = await startEmbeddedPostgres({ dataDir: first.dataDir }).catch(
        (e: Error) => e,
      );
      expect(refused).toBeInstanceOf(Error);
      expect((refused as Error).message).toMatch(/in use by another Fusillade process \(pid \d+\)/);
      expect(await query(first.url, "SELECT 1 AS one")).toEqual([{ one: 1 }]); // untouched
    } finally {
      owner.kill("SIGKILL");
      await once(owner, "exit");
    }
    const second = await start("owned"); // its owner died: stale, taken over
    expect(await query(second.url, "SELECT 1 AS one")).toEqual([{ one: 1 }]);
    await second.stop();
  });

  test("a port in use fails with the server log in the message", async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const { port } = blocker.address() as net.AddressInfo;
    try {
      await expect(start("port-in-use", { port })).rejects.toThrow(
        /did not start[\s\S]*server log[\s\S]*could not bind/,
      );
    } finally {
      blocker.close();
    }
  });
});

describe("resolveDatabase", () => {
  test("otherwise starts an embedded server with its data in <dataDir>/pg", async () => {
    const dataDir = path.join(tmp, "project", ".fusillade");
    const db = await resolveDatabase({ dataDir });
    running.push(db);
    expect(db.embedded).toBe(true);
    expect(db.url).not.toContain(":5432/");
    expect(await query(db.url, "SHOW data_directory")).toEqual([
      { data_directory: path.join(dataDir, "pg") },
    ]);
    await db.stop();
  });
});

describe("test databases", () => {
  const fileDb = useTestDatabase();

  test("useTestDatabase gives this file a migrated database", async () => {
    expect(await query(fileDb.url, "SELECT to_regclass('batches') IS NOT NULL AS ok")).toEqual([
      { ok: true },
    ]);
  });

  test("createTestDatabase gives a new migrated database per call", async () => {
    const [a, b] = await Promise.all([createTestDatabase(), createTestDatabase()]);
    try {
      expect(a.url).not.toBe(b.url);
      expect(a.url).not.toBe(fileDb.url);
      for (const db of [a, b]) {
        const [row] = await query<{ db: string; ok: boolean }>(
          db.url,
          "SELECT current_database() AS db, to_regclass('batches') IS NOT NULL AS ok",
        );
        expect(row).toEqual({ db: db.name, ok: true });
      }
      await query(a.url, "CREATE TABLE only_in_a (x int)");
      expect(await query(b.url, "SELECT to_regclass('only_in_a') AS t")).toEqual([{ t: null }]);
    } finally {
      await Promise.all([a.drop(), b.drop()]);
    }
    await a.drop(); // idempotent
    await expect(query(a.url, "SELECT 1")).rejects.toThrow(/does not exist/);
  });
});
