/**
 * Builds dist/ (what bin/fusillade.js and the package's "fusillade/client" export run)
 * for the tests that run the built code. A failed build throws with tsc's output: tsc
 * still emits when a file has a type error, so carrying on would test a dist/ that does
 * not match the sources.
 *
 * Test files run in parallel; a lock directory makes their builds take turns, so no
 * two tsc processes write dist/ at once. The second build is incremental (nothing to emit).
 */
import { execFile } from "node:child_process";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { isAlive } from "./pid.js";

const run = promisify(execFile);

/** The repository's root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

const LOCK = path.join(ROOT, "dist/.build-lock");
/** How often a waiting build looks at the lock: a file lock has no event to wait on. */
const LOCK_POLL_MS = 200;

/** Runs `tsc -p <project>` from the root; throws with its output when it fails. */
export async function tsc(project: string): Promise<void> {
  try {
    await run("npx", ["tsc", "-p", project], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    throw new Error(`tsc -p ${project} failed:\n${e.stdout ?? ""}${e.stderr ?? ""}`, {
      cause: err,
    });
  }
}

/** Builds dist/ from src/ and migrations/ (tsconfig.build.json), one test file at a time. */
export async function buildDist(): Promise<void> {
  await mkdir(path.dirname(LOCK), { recursive: true });
  await takeLock();
  try {
    await tsc("tsconfig.build.json");
  } finally {
    await rm(LOCK, { recursive: true, force: true });
  }
}

async function takeLock(): Promise<void> {
  for (;;) {
    try {
      await mkdir(LOCK);
      await writeFile(path.join(LOCK, "pid"), String(process.pid));
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    // A holder that died (kill -9) leaves the lock behind: take it over.
    const pid = Number(await readFile(path.join(LOCK, "pid"), "utf8").catch(() => ""));
    if (pid && !isAlive(pid)) await rm(LOCK, { recursive: true, force: true });
    else await sleep(LOCK_POLL_MS);
  }
}
