/**
 * What a new user of the `fusillade` CLI runs into (issue 20): the final
 * progress line, running against queued, request ids, error columns, quiet
 * commands. `node bin/fusillade.js` in a child process against a control
 * plane on a real socket; requests reach their states through SQL (the
 * trigger then behaves as for the lease code).
 */
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildDist } from "../helpers/build.js";
import { cliRunner } from "../helpers/cli-process.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

let t: TestControlPlane;
let sql: pg.Pool;
let dir: string;

beforeAll(async () => {
  await buildDist();
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  dir = await mkdtemp(path.join(os.tmpdir(), "fusillade-first-use-"));
}, 180_000);

afterAll(async () => {
  await sql?.end();
  await t?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const { start, cli, batchFile } = cliRunner(
  () => t.url,
  () => dir,
);

/** Submits `file` without watching; returns the batch id. */
async function submit(file: string): Promise<string> {
  const r = await cli(["submit", file, "--endpoint", "http://127.0.0.1:9", "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { batch_id: string }).batch_id;
}

/** Fails lines `lines` of the batch for good with an upstream `status`. */
async function failLines(batchId: string, lines: number[], status: number): Promise<void> {
  await sql.query(
    `UPDATE requests SET state = 'failed', finished_at = now(), updated_at = now(),
       lease_holder = NULL, lease_expires_at = NULL, not_before = NULL,
       response_status = $3::int, error_code = 'http_error',
       error_message = 'upstream answered ' || $3::int || ': slow down'
     WHERE batch_id = $1 AND line = ANY($2)`,
    [batchId, lines, status],
  );
}

describe("the CLI a new user meets", () => {
  it("the last progress line is the final breakdown", async () => {
    const file = await batchFile("final.jsonl", 6);
    const p = start([
      "submit",
      file,
      "--endpoint",
      "http://127.0.0.1:9",
      "--max-retries",
      "0",
      "--watch",
      "--interval",
      "500ms",
    ]);
    const [, batchId] = await p.waitFor(/batch ([0-9a-f-]{36}) created/);
    await p.waitFor(/in_progress: 0\/6 done/);
    // Three wait to retry after a 429: the breakdown says so…
    await sql.query(
      `UPDATE requests SET not_before = now() + interval '1 hour', response_status = 429,
         error_code = 'http_error', error_message = 'upstream answered 429'
       WHERE batch_id = $1 AND line IN (1, 2, 3)`,
      [batchId],
    );
    await p.waitFor(/errors: http_error 429 ×3 retrying/);
    // …then every request fails at once, before the next breakdown is due.
    await failLines(batchId!, [1, 2, 3, 4], 429);
    await failLines(batchId!, [5, 6], 500);
    const r = await p.done;
    expect(r.code, r.stderr).toBe(0);
    const last = r.stderr.trim().split("\n").at(-1)!;
    expect(last).toMatch(/completed: 6\/6 done/);
    expect(last).toContain("failed 6");
    expect(last).toContain("errors: http_error 429 ×4, http_error 500 ×2");
    expect(last).not.toContain("retrying");
  });
});
