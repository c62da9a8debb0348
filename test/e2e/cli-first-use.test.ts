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

  it("a result line's id finds its request; requests lists ids; errors keep their status", async () => {
    const batchId = await submit(await batchFile("ids.jsonl", 3));
    // Line 1: answered 429 and retried, then 500 for good, through the states the lease code uses.
    const step = (set: string) =>
      sql.query(`UPDATE requests SET ${set}, updated_at = now() WHERE batch_id = $1 AND line = 1`, [
        batchId,
      ]);
    const target = "POST http://127.0.0.1:9/v1/chat/completions";
    await step(`state = 'leased', attempt = 1, lease_holder = 'd', lease_token = 1,
      lease_expires_at = now() + interval '1 hour'`);
    await step(`state = 'pending', lease_holder = NULL, lease_expires_at = NULL,
      response_status = 429, error_code = 'http_error',
      error_message = '${target} answered 429 Too Many Requests'`);
    await step(`state = 'leased', attempt = 2, lease_holder = 'd', lease_token = 2,
      lease_expires_at = now() + interval '1 hour'`);
    await step(`state = 'failed', finished_at = now(), lease_holder = NULL, lease_expires_at = NULL,
      response_status = 500, error_code = 'http_error',
      error_message = '${target} answered 500 Internal Server Error'`);

    const failed = await cli(["requests", batchId, "--state", "failed"]);
    expect(failed.code, failed.stderr).toBe(0);
    const [header, row] = failed.stdout.split("\n");
    expect(header).toMatch(/^LINE\s+ID\s+CUSTOM_ID\s+MODEL\s+STATE\s+ATTEMPTS\s+STATUS\s+ERROR$/);
    expect(row).toMatch(
      /^1\s+[0-9a-f-]{36}\s+c1\s+gpt-test\s+failed\s+2\s+500\s+http_error: answered 500 Internal Server Error$/,
    );
    const id = /^1\s+([0-9a-f-]{36})/.exec(row!)![1]!;

    // The id of its error line (what `results` prints) names the same request.
    const errs = await cli(["results", batchId, "--errors-only"]);
    const line = JSON.parse(errs.stdout.split("\n")[0]!) as { id: string; custom_id: string };
    expect(line.custom_id).toBe("c1");
    expect(line.id).toMatch(/^batch_req_[0-9a-f]{32}$/);
    const byLineId = await cli(["request", line.id, "--json"]);
    expect(byLineId.code, byLineId.stderr).toBe(0);
    const shown = JSON.parse(byLineId.stdout);
    expect(shown).toMatchObject({ id, custom_id: "c1" });
    // Every attempt says how it ended.
    expect(shown.attempt_history).toMatchObject([
      { attempt: 1, outcome: "retried", status_code: 429, error_code: "http_error" },
      { attempt: 2, outcome: "failed", status_code: 500, error_code: "http_error" },
    ]);
    const text = await cli(["request", id]);
    expect(text.stdout).toMatch(/\n1\s+\S+\s+\d+ ms\s+retried\s+429\s+http_error\n/);
    expect(text.stdout).toMatch(/\n2\s+\S+\s+\d+ ms\s+failed\s+500\s+http_error\n/);
    // And retry takes it too.
    const retried = await cli(["retry", batchId, "--request-id", line.id]);
    expect(retried.code, retried.stderr).toBe(0);
    expect(retried.stdout).toMatch(/retried 1 request\b/);
  });

  it("says so when there is nothing to show or nothing to retry", async () => {
    const batchId = await submit(await batchFile("quiet.jsonl", 2));
    await sql.query(
      `UPDATE requests SET state = 'completed', finished_at = now(), updated_at = now(),
         response_status = 200, response_body = convert_to('{}', 'UTF8')
       WHERE batch_id = $1`,
      [batchId],
    );
    const none = await cli(["results", batchId, "--errors-only"]);
    expect(none.code, none.stderr).toBe(0);
    expect(none.stdout).toBe("");
    expect(none.stderr).toBe(
      `no error lines: no request of batch ${batchId} failed, expired or was cancelled\n`,
    );
    // A completed request named to retry: an error that says its state.
    const again = await cli(["retry", batchId, "--custom-id", "c2"]);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(
      "fusillade: nothing to run again: c2 is completed (only failed or expired requests run again)\n",
    );
  });
});
