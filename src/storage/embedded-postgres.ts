import { randomBytes } from "node:crypto";
import { constants as fsc } from "node:fs";
import {
  lchown,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  readlink,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import {
  EmbeddedPostgresError,
  exists,
  type Native,
  type RunAs,
  run,
  unprivilegedUser,
  usableNative,
} from "./embedded-postgres-binaries.js";

export { EmbeddedPostgresError };

export interface EmbeddedPostgresOptions {
  /** Directory that holds the cluster; created (`initdb`) when it holds none. */
  dataDir: string;
  /** TCP port, on 127.0.0.1 only. @default a free port, picked at each start */
  port?: number;
  /** Database created when missing; the URL points at it. @default "fusillade" */
  database?: string;
  /** Data is thrown away afterwards (tests): `initdb --no-sync`, `fsync=off`. @default false */
  ephemeral?: boolean;
  /** Extra server settings, each passed as `-c name=value`. */
  settings?: Readonly<Record<string, string | number>>;
  /** Progress messages (initdb, start, stale server). @default none */
  log?: (msg: string) => void;
}

/** A running embedded server. */
export interface EmbeddedPostgres {
  /** `postgres://postgres:PASSWORD@127.0.0.1:PORT/DATABASE`: every connection takes the generated password. */
  url: string;
  port: number;
  dataDir: string;
  /** Where the unix socket is (the data dir, or tmpdir when that path is too long for one). */
  socketDir: string;
  /** Fast shutdown (`pg_ctl stop -m fast`). Idempotent; a no-op if another start took over. */
  stop(): Promise<void>;
}

const SECOND = 1000;
const START_TIMEOUT_S = 60;
const STOP_TIMEOUT_S = 60;
/** Bytes of server log quoted in error messages. */
const LOG_TAIL_BYTES = 3000;
/** The server log is set aside (one generation kept) once it grows past this. */
const LOG_ROTATE_BYTES = 10 * 1024 * 1024;
/** A free port can be taken by someone else before the server binds it: try again. */
const PORT_ATTEMPTS = 3;
/** `sun_path` holds 108 bytes with the NUL; longer socket paths make the server fail. */
const MAX_SOCKET_PATH = 107;
const LOG_FILE = "server.log";

/** Starts (after `initdb` or stopping a stale server, when needed) a Postgres on `dataDir`. */
export async function startEmbeddedPostgres(
  opts: EmbeddedPostgresOptions,
): Promise<EmbeddedPostgres> {
  const log = opts.log ?? (() => {});
  const database = opts.database ?? "fusillade";
  const runAs = await unprivilegedUser();
  const native = await usableNative(runAs, log);
  const dataDir = await prepareDataDir(opts.dataDir, runAs);

  await refuseIfOwnedByAnother(dataDir);
  await stopStaleServer(dataDir, log);
  if (await exists(path.join(dataDir, "PG_VERSION"))) {
    await checkClusterVersion(dataDir, native.version);
  } else {
    await initdb(native, dataDir, runAs, opts.ephemeral ?? false, log);
  }

  // Every connection takes the password, the socket's too: as root, the server runs as
  // `nobody`, and any process of that shared account can reach a socket it owns. The
  // password is set with the server down (single-user mode), so no start trusts anyone.
  const password = await ensurePassword(dataDir);
  await setPasswordOffline(native, dataDir, runAs, password);
  await writeFile(path.join(dataDir, "pg_hba.conf"), PG_HBA);
  const settings: Record<string, string | number> = {
    ...(opts.ephemeral ? { fsync: "off", synchronous_commit: "off", full_page_writes: "off" } : {}),
    unix_socket_permissions: "0700",
    ...opts.settings,
  };
  const started = Date.now();
  let port = 0;
  const socketDir = socketDirOf(dataDir);
  for (let attempt = 1; ; attempt++) {
    port = opts.port ?? (await freePort());
    const failure = await pgCtlStart(native, dataDir, port, socketDir, settings, runAs);
    if (failure === undefined) break;
    const portTaken = /could not bind|address already in use/i.test(failure);
    if (opts.port === undefined && portTaken && attempt < PORT_ATTEMPTS) {
      log(`port ${port} was taken before the server bound it; trying another`);
      continue;
    }
    throw new EmbeddedPostgresError(`embedded Postgres did not start in ${dataDir}:\n${failure}`);
  }
  const postmasterPid = await readPostmasterPid(dataDir);
  await writeFile(path.join(dataDir, OWNER_FILE), `${process.pid}\n`);
  log(`embedded Postgres ready on 127.0.0.1:${port} in ${Date.now() - started} ms (${dataDir})`);

  // Whatever ends this process without stop() (an uncaught exception, process.exit), the
  // server goes with it: SIGINT is Postgres' fast shutdown, which it finishes on its own.
  // (kill -9 cannot be caught: the next start on this data dir stops the stale server.)
  const onExit = () => {
    if (postmasterPid !== undefined) signal(postmasterPid, "SIGINT");
  };
  process.once("exit", onExit);
  let stopping: Promise<void> | undefined;
  const stop = () => {
    process.off("exit", onExit);
    stopping ??= stopServer(native, dataDir, postmasterPid, runAs, log);
    return stopping;
  };
  try {
    await ensureDatabase(port, password, database);
  } catch (cause) {
    await stop().catch(() => {});
    throw new EmbeddedPostgresError(`could not create database "${database}": ${String(cause)}`, {
      cause,
    });
  }
  return {
    url: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${encodeURIComponent(database)}`,
    port,
    dataDir,
    socketDir,
    stop,
  };
}

/**
 * Stops a server left running on `dataDir` (its process was killed, or another process still
 * holds it): SIGQUIT to the postmaster (what `pg_ctl stop -m immediate` sends), then SIGKILL
 * whatever still runs there, then removes `postmaster.pid`. Returns whether it found one.
 */
/** Names the Fusillade process using a data dir, so a second one does not take it over. */
const OWNER_FILE = "fusillade.owner";
/** The postgres role's password, for TCP connections (mode 0600). */
const PASSWORD_FILE = "fusillade.password";

/**
 * A server whose owner process is alive is not stale: a second `serve` on the
 * same data dir must not stop the first one's database. (A server whose owner
 * died — SIGKILL, a crash — is stale and is taken over.)
 */
async function refuseIfOwnedByAnother(dataDir: string): Promise<void> {
  const text = await readFile(path.join(dataDir, OWNER_FILE), "utf8").catch(() => "");
  const owner = Number.parseInt(text, 10);
  if (!Number.isInteger(owner) || owner <= 0 || owner === process.pid) return;
  const cmdline = await readFile(`/proc/${owner}/cmdline`, "utf8").catch(() => "");
  if (!/node/.test(cmdline)) return; // gone, or the pid was reused by something else
  if ((await readPostmasterPid(dataDir)) === undefined) return; // it stopped its server
  throw new EmbeddedPostgresError(
    `the embedded Postgres in ${dataDir} is in use by another Fusillade process (pid ${owner}); ` +
      "stop that one first, or give this one another --data-dir",
  );
}

export async function stopStaleServer(
  dataDir: string,
  log: (msg: string) => void = () => {},
): Promise<boolean> {
  const pidFile = path.join(dataDir, "postmaster.pid");
  const pid = await readPostmasterPid(dataDir);
  if (pid === undefined) return false;
  const dir = await realpath(dataDir);
  // Processes are matched by working directory (every Postgres process chdirs to its data
  // dir), not by the pid alone: after a reboot that pid may belong to anything.
  let procs = await processesIn(dir);
  if (procs.length > 0) {
    log(`stopping a stale Postgres (pid ${pid}) left running on ${dir}`);
    if (procs.includes(pid)) {
      signal(pid, "SIGQUIT");
      procs = await waitForExit(dir, 5 * SECOND);
    }
    for (const p of procs) signal(p, "SIGKILL");
    procs = await waitForExit(dir, 5 * SECOND);
    if (procs.length > 0) {
      throw new EmbeddedPostgresError(
        `stale Postgres processes ${procs.join(", ")} on ${dir} do not exit`,
      );
    }
  } else {
    log(`removing a stale postmaster.pid (pid ${pid} is gone) from ${dir}`);
  }
  await rm(pidFile, { force: true });
  return true;
}

// ── user and binaries ────────────────────────────────────────────────────────

/** Creates `dataDir` (0700, owned by `runAs`) and checks `runAs` can use it; its real path. */
async function prepareDataDir(dataDir: string, runAs: RunAs | undefined): Promise<string> {
  // Parents get the usual mode (a recursive mkdir would give them the leaf's 0700).
  await mkdir(path.dirname(path.resolve(dataDir)), { recursive: true });
  await mkdir(dataDir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== "EEXIST") throw err;
  });
  const dir = await realpath(dataDir);
  if (runAs === undefined) return dir;
  if ((await stat(dir)).uid !== runAs.uid) await chownTree(dir, runAs);
  const r = await run("/bin/sh", ["-c", 'test -r "$1" -a -w "$1" -a -x "$1"', "sh", dir], {
    runAs,
  });
  if (r.code !== 0) {
    throw new EmbeddedPostgresError(
      `data directory ${dir} is not usable by user ${runAs.name} (uid ${runAs.uid}), which ` +
        "Postgres runs as because this process runs as root; a parent directory is probably " +
        "private (under /root, or made by mkdtemp, which uses mode 0700): choose a data " +
        "directory elsewhere, or set DATABASE_URL",
    );
  }
  return dir;
}

async function chownTree(p: string, runAs: RunAs): Promise<void> {
  await lchown(p, runAs.uid, runAs.gid);
  if (!(await lstat(p)).isDirectory()) return;
  for (const name of await readdir(p)) await chownTree(path.join(p, name), runAs);
}

async function checkClusterVersion(dataDir: string, version: string): Promise<void> {
  const found = (await readFile(path.join(dataDir, "PG_VERSION"), "utf8")).trim();
  const major = version.split(".")[0];
  if (found !== major) {
    throw new EmbeddedPostgresError(
      `${dataDir} holds a Postgres ${found} cluster but the embedded binaries are Postgres ` +
        `${major}; move that directory away (or dump and restore it)`,
    );
  }
}

async function initdb(
  native: Native,
  dataDir: string,
  runAs: RunAs | undefined,
  ephemeral: boolean,
  log: (msg: string) => void,
): Promise<void> {
  const started = Date.now();
  // No server runs during initdb, and each start writes its own pg_hba.conf (PG_HBA) first:
  // initdb's "trust" is never used.
  const args = ["-D", dataDir, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale"];
  if (ephemeral) args.push("--no-sync");
  const r = await run(path.join(native.root, "bin", "initdb"), args, { runAs, cwd: dataDir });
  if (r.code !== 0) {
    throw new EmbeddedPostgresError(
      `initdb failed in ${dataDir} (exit ${r.code}):\n${tail(r.output)}`,
    );
  }
  log(`initdb created a cluster in ${dataDir} in ${Date.now() - started} ms`);
}

// ── server ───────────────────────────────────────────────────────────────────

/** `pg_ctl -w start`; undefined when the server is ready, else what went wrong (with log tail). */
async function pgCtlStart(
  native: Native,
  dataDir: string,
  port: number,
  socketDir: string,
  settings: Readonly<Record<string, string | number>>,
  runAs: RunAs | undefined,
): Promise<string | undefined> {
  const logFile = path.join(dataDir, LOG_FILE);
  const logStart = await rotateLog(logFile);
  // pg_ctl hands -o to /bin/sh, so every value is quoted.
  const serverOpts = [`-p ${port}`, "-h 127.0.0.1", `-k ${shellQuote(socketDir)}`];
  for (const [name, value] of Object.entries(settings))
    serverOpts.push(`-c ${shellQuote(`${name}=${value}`)}`);
  const args = ["start", "-w", "-t", String(START_TIMEOUT_S), "-D", dataDir, "-l", logFile];
  args.push("-o", serverOpts.join(" "));
  const r = await run(path.join(native.root, "bin", "pg_ctl"), args, { runAs, cwd: dataDir });
  if (r.code === 0) return undefined;
  const serverLog = await readFrom(logFile, logStart);
  return `pg_ctl: ${r.output.trim()}\nserver log (${logFile}):\n${tail(serverLog)}`;
}

async function stopServer(
  native: Native,
  dataDir: string,
  postmasterPid: number | undefined,
  runAs: RunAs | undefined,
  log: (msg: string) => void,
): Promise<void> {
  // A later start on this dir (stale-server handling) may own the server now: leave it alone.
  const current = await readPostmasterPid(dataDir);
  if (current === undefined || current !== postmasterPid) return;
  const args = ["stop", "-m", "fast", "-w", "-t", String(STOP_TIMEOUT_S), "-D", dataDir];
  const r = await run(path.join(native.root, "bin", "pg_ctl"), args, { runAs, cwd: dataDir });
  // A failure with nothing left running (the server was killed meanwhile) is a stop all the same.
  if (r.code !== 0 && (await processesIn(dataDir)).length > 0) {
    throw new EmbeddedPostgresError(`pg_ctl stop failed for ${dataDir}: ${r.output.trim()}`);
  }
  log(`embedded Postgres stopped (${dataDir})`);
}

/** The socket goes in the data dir unless its path would be too long for a unix socket. */
function socketDirOf(dataDir: string): string {
  return Buffer.byteLength(path.join(dataDir, ".s.PGSQL.65535")) <= MAX_SOCKET_PATH
    ? dataDir
    : os.tmpdir();
}

/**
 * Who may connect how: with the generated password only, over the socket
 * (mode 0700, but owned by an account others may share: `nobody`) and over
 * TCP on loopback alike. Nothing is trusted.
 */
const PG_HBA = `# Written by Fusillade at each start of its embedded Postgres.
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
`;

/** The password of the cluster's postgres role: made once, kept in the data dir (0600). */
async function ensurePassword(dataDir: string): Promise<string> {
  const file = path.join(dataDir, PASSWORD_FILE);
  const existing = await readFile(file, "utf8").catch(() => undefined);
  if (existing !== undefined && existing.trim() !== "") return existing.trim();
  const password = randomBytes(24).toString("base64url");
  await writeFile(file, `${password}\n`, { mode: 0o600 });
  return password;
}

/**
 * Sets the postgres role's password with the server down: one statement in
 * single-user mode (about 40 ms), which needs no connection and so no trust.
 * Every start does it, so the file and the role agree whatever came before
 * (a cluster made by a version that trusted the socket, a lost file).
 */
async function setPasswordOffline(
  native: Native,
  dataDir: string,
  runAs: RunAs | undefined,
  password: string,
): Promise<void> {
  // Single-user mode reads one statement per line.
  if (/[\r\n\0]/.test(password)) {
    throw new EmbeddedPostgresError(
      `${path.join(dataDir, PASSWORD_FILE)} holds a line break or NUL: put one password on its first line`,
    );
  }
  const input =
    "SET password_encryption = 'scram-sha-256'\n" +
    `ALTER ROLE postgres PASSWORD '${password.replaceAll("'", "''")}'\n`;
  const r = await run(
    path.join(native.root, "bin", "postgres"),
    ["--single", "-D", dataDir, "postgres"],
    { runAs, cwd: dataDir, input },
  );
  if (r.code !== 0 || /\b(ERROR|FATAL|PANIC):/.test(r.output)) {
    throw new EmbeddedPostgresError(
      `could not set the password of the embedded Postgres in ${dataDir} (exit ${r.code}):\n${tail(r.output)}`,
    );
  }
}

async function ensureDatabase(port: number, password: string, database: string): Promise<void> {
  const client = new pg.Client({
    host: "127.0.0.1",
    port,
    user: "postgres",
    password,
    database: "postgres",
  });
  await client.connect();
  try {
    const found = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [database]);
    if (found.rowCount) return;
    await client
      .query(`CREATE DATABASE ${client.escapeIdentifier(database)}`)
      .catch((err: unknown) => {
        // 42P04 duplicate_database, 23505 its unique index: a concurrent start created it.
        const code = (err as { code?: string }).code;
        if (code !== "42P04" && code !== "23505") throw err;
      });
  } finally {
    await client.end();
  }
}

/** Picks a port free right now on 127.0.0.1 (the OS's choice for port 0). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

// ── processes ────────────────────────────────────────────────────────────────

async function readPostmasterPid(dataDir: string): Promise<number | undefined> {
  const text = await readFile(path.join(dataDir, "postmaster.pid"), "utf8").catch(() => undefined);
  const pid = Number(text?.split("\n")[0]);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** Pids whose working directory is `dir` (Linux /proc; only our own unless we are root). */
async function processesIn(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const cwd = await readlink(`/proc/${name}/cwd`).catch(() => undefined);
    if (cwd === dir) pids.push(Number(name));
  }
  return pids;
}

/** Waits until no process runs in `dir` or `ms` pass; the pids still there. */
async function waitForExit(dir: string, ms: number): Promise<number[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const procs = await processesIn(dir);
    if (procs.length === 0 || Date.now() >= deadline) return procs;
    await new Promise((r) => setTimeout(r, 20));
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Already gone.
  }
}

// ── small helpers ────────────────────────────────────────────────────────────

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

function tail(text: string): string {
  return text.length <= LOG_TAIL_BYTES
    ? text.trimEnd()
    : `…${text.slice(-LOG_TAIL_BYTES).trimEnd()}`;
}

/** Sets a large log aside; returns the offset this start's messages will begin at. */
async function rotateLog(logFile: string): Promise<number> {
  const size = await stat(logFile).then(
    (s) => s.size,
    () => 0,
  );
  if (size <= LOG_ROTATE_BYTES) return size;
  await rename(logFile, `${logFile}.1`);
  return 0;
}

async function readFrom(file: string, offset: number): Promise<string> {
  const fh = await open(file, fsc.O_RDONLY).catch(() => undefined);
  if (fh === undefined) return "(no log)";
  try {
    const { size } = await fh.stat();
    const start = Math.max(offset, size - LOG_TAIL_BYTES);
    const buf = Buffer.alloc(Math.max(0, size - start));
    await fh.read(buf, 0, buf.length, start);
    return buf.toString();
  } finally {
    await fh.close();
  }
}
