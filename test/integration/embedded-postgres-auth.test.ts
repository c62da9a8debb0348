/**
 * The embedded Postgres trusts no connection: over its unix socket as over
 * TCP, nothing connects as its superuser without the generated password —
 * not this process, and (when the tests run as root, so the server runs as
 * `nobody`) not a process of the `nobody` account that owns the socket.
 */
import { execFile } from "node:child_process";
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  type EmbeddedPostgres,
  startEmbeddedPostgres,
} from "../../src/storage/embedded-postgres.js";

const run = promisify(execFile);
const AS_ROOT = process.getuid?.() === 0;

let tmp: string;
let server: EmbeddedPostgres;

beforeAll(async () => {
  // Named like global-setup's dirs, so a later run removes it if this process is killed.
  tmp = await mkdtemp(path.join(os.tmpdir(), `fusillade-test-${process.pid}-`));
  await chmod(tmp, 0o755); // as root the server runs as `nobody`, which must get through
  server = await startEmbeddedPostgres({ dataDir: path.join(tmp, "auth"), ephemeral: true });
});

afterAll(async () => {
  await server?.stop().catch(() => {});
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function passwordOf(url: string): string {
  return decodeURIComponent(new URL(url).password);
}

/** Connects as postgres with `config`, runs SELECT 1; "ok" or the error message. */
async function attempt(config: pg.ClientConfig): Promise<string> {
  const client = new pg.Client({ user: "postgres", database: "postgres", ...config });
  try {
    await client.connect();
    await client.query("SELECT 1");
    return "ok";
  } catch (e) {
    return (e as Error).message;
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * The same attempt from a process of the `nobody` account (node and pg from
 * this checkout): what a stranger on the host sharing that account gets.
 */
async function attemptAsNobody(config: pg.ClientConfig): Promise<string> {
  const pgPath = createRequire(import.meta.url).resolve("pg");
  const script = `
    const pg = require(${JSON.stringify(pgPath)});
    const c = new pg.Client(${JSON.stringify({ user: "postgres", database: "postgres", ...config })});
    c.connect().then(() => c.query("SELECT 1")).then(
      () => { console.log("ok"); return c.end(); },
      (e) => { console.log(e.message); return c.end().catch(() => {}); },
    );`;
  const { stdout } = await run("runuser", ["-u", "nobody", "--", process.execPath, "-e", script]);
  return stdout.trim();
}

describe("embedded Postgres authentication", () => {
  test("the socket takes the password: none or a wrong one is refused, the right one works", async () => {
    const socket = { host: server.socketDir, port: server.port };
    expect(await attempt(socket)).toMatch(/password/);
    expect(await attempt({ ...socket, password: "guess" })).toMatch(
      /password authentication failed for user "postgres"/,
    );
    expect(await attempt({ ...socket, password: passwordOf(server.url) })).toBe("ok");
    // The hba file says so for every kind of connection: no "trust" line anywhere.
    const hba = await readFile(path.join(server.dataDir, "pg_hba.conf"), "utf8");
    expect(hba).not.toMatch(/^\s*[^#\s].*\btrust\b/m);
    expect(hba).toMatch(/^local\s+all\s+all\s+scram-sha-256$/m);
  });

  test("TCP takes the password too", async () => {
    const tcp = { host: "127.0.0.1", port: server.port };
    expect(await attempt(tcp)).toMatch(/password/);
    expect(await attempt({ ...tcp, password: "guess" })).toMatch(/password authentication failed/);
    expect(await attempt({ ...tcp, password: passwordOf(server.url) })).toBe("ok");
  });

  test.runIf(AS_ROOT)(
    "a process of the account the server runs as (nobody) needs the password on the socket",
    async () => {
      // The socket is reachable by nobody (it owns it): only the password stands in the way.
      expect((await stat(path.join(server.socketDir, `.s.PGSQL.${server.port}`))).uid).toBe(
        (await stat(server.dataDir)).uid,
      );
      const socket = { host: server.socketDir, port: server.port };
      expect(await attemptAsNobody(socket)).toMatch(/password/);
      expect(await attemptAsNobody({ ...socket, password: "guess" })).toMatch(
        /password authentication failed/,
      );
      expect(await attemptAsNobody({ ...socket, password: passwordOf(server.url) })).toBe("ok");
      // Nor can it read the password: the file is root's, mode 0600.
      const file = await stat(path.join(server.dataDir, "fusillade.password"));
      expect(file.uid).toBe(0);
      expect(file.mode & 0o077).toBe(0);
    },
  );

  test("a cluster whose password file was lost gets a new password at the next start, without trust", async () => {
    const dataDir = path.join(tmp, "lost");
    const first = await startEmbeddedPostgres({ dataDir, ephemeral: true });
    await first.stop();
    await rm(path.join(dataDir, "fusillade.password"));
    // And an hba left by an older version that trusted the socket is replaced.
    await writeFile(path.join(dataDir, "pg_hba.conf"), "local all all trust\n");
    const second = await startEmbeddedPostgres({ dataDir, ephemeral: true });
    try {
      expect(passwordOf(second.url)).not.toBe(passwordOf(first.url));
      const socket = { host: second.socketDir, port: second.port };
      expect(await attempt(socket)).toMatch(/password/);
      expect(await attempt({ ...socket, password: passwordOf(first.url) })).toMatch(
        /password authentication failed/,
      );
      expect(await attempt({ ...socket, password: passwordOf(second.url) })).toBe("ok");
    } finally {
      await second.stop();
    }
  });
});
