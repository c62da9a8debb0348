/**
 * The `fusillade` client commands as a user runs them: `node bin/fusillade.js`
 * in a child process (from dist/, built once here) against a control plane
 * on a real socket. Requests reach terminal states either through SQL (the
 * trigger then behaves exactly as for the lease code) or through a real
 * dispatcher and a loopback upstream. Also runs the Python example when
 * Debian's python3-grpcio is installed.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllowList } from "../../src/domain/endpoints.js";
import { buildDist, ROOT } from "../helpers/build.js";
import { cliRunner, jsonl, watchProcess } from "../helpers/cli-process.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { startTestDispatcher } from "../helpers/dispatcher-process.js";
import { startTcpProxy } from "../helpers/tcp-proxy.js";
import { startUpstream } from "../helpers/upstream.js";

const PYTHON_EXAMPLE = path.join(ROOT, "examples/python/run.sh");

let t: TestControlPlane;
let sql: pg.Pool;
let dir: string;

beforeAll(async () => {
  // dist/ is what bin/fusillade.js runs: a failed build fails here.
  await buildDist();
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  dir = await mkdtemp(path.join(os.tmpdir(), "fusillade-cli-"));
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

/** Moves every non-terminal request of the batch to a terminal state: line 2 fails, the rest complete. */
async function finish(batchId: string): Promise<void> {
  await sql.query(
    `UPDATE requests SET finished_at = now(), updated_at = now(), response_status = 200,
       lease_holder = NULL, lease_expires_at = NULL, not_before = NULL,
       state = CASE WHEN line = 2 THEN 'failed' ELSE 'completed' END,
       response_body = convert_to('{"answer":' || line || '}', 'UTF8'),
       error_code = CASE WHEN line = 2 THEN 'http_error' END,
       error_message = CASE WHEN line = 2 THEN 'upstream answered 500' END
     WHERE batch_id = $1 AND state IN ('pending', 'leased')`,
    [batchId],
  );
}

describe("fusillade CLI", () => {
  it("has --help at every level", async () => {
    for (const args of [
      ["--help"],
      ["submit", "--help"],
      ["watch", "--help"],
      ["results", "--help"],
      ["files", "--help"],
      ["files", "list", "--help"],
      ["batches", "--help"],
      ["limits", "set", "--help"],
      ["tenants", "set-weight", "--help"],
    ]) {
      const r = await cli(args);
      expect(r.code, args.join(" ")).toBe(0);
      expect(r.stdout).toMatch(/^Usage: fusillade/);
    }
    const top = await cli(["--help"]);
    for (const c of [
      "submit",
      "watch",
      "results",
      "status",
      "cancel",
      "retry",
      "resume",
      "requests",
      "request",
      "files",
      "batches",
      "limits",
      "tenants",
    ]) {
      expect(top.stdout).toContain(`  ${c}`);
    }
  });

  it("submits with --json, then status and results", async () => {
    const file = await batchFile("three.jsonl", 3);
    const sub = await cli([
      "--server",
      t.url,
      "submit",
      file,
      "--endpoint",
      "http://127.0.0.1:9",
      "--metadata",
      "team=search",
      "--metadata",
      "run=7",
      "--json",
    ]);
    expect(sub.code, sub.stderr).toBe(0);
    const created = JSON.parse(sub.stdout) as Record<string, unknown>;
    expect(created).toMatchObject({
      filename: "three.jsonl",
      requests: 3,
      models: ["gpt-test"],
      state: "in_progress",
      openai_status: "in_progress",
    });
    expect(created.batch_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(created.file_id).toMatch(/^[0-9a-f-]{36}$/);
    const batchId = created.batch_id as string;

    const status = await cli(["status", batchId, "--json"]);
    expect(status.code).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({
      id: batchId,
      state: "in_progress",
      metadata: { team: "search", run: "7" },
      counts: { total: 3, pending: 3, completed: 0 },
    });
    const human = await cli(["status", batchId]);
    expect(human.stdout).toContain(`batch ${batchId}`);
    expect(human.stdout).toMatch(/requests\s+3 total: 3 queued/);

    await finish(batchId);
    const res = await cli(["results", batchId]);
    expect(res.code, res.stderr).toBe(0);
    const lines = jsonl(res.stdout);
    expect(lines.map((l) => l.custom_id)).toEqual(["c1", "c2", "c3"]);
    expect(lines[0]).toMatchObject({
      response: { status_code: 200, body: { answer: 1 } },
      error: null,
    });
    expect(lines[1]).toMatchObject({ error: { code: "http_error" } });

    const files = await cli([
      "results",
      batchId,
      "--output",
      "out.jsonl",
      "--errors",
      "err.jsonl",
      "--json",
    ]);
    expect(files.code, files.stderr).toBe(0);
    expect(JSON.parse(files.stdout)).toMatchObject({ output_lines: 2, error_lines: 1 });
    expect(jsonl(await readFile(path.join(dir, "out.jsonl"), "utf8"))).toHaveLength(2);
    expect(jsonl(await readFile(path.join(dir, "err.jsonl"), "utf8"))[0]!.custom_id).toBe("c2");
    expect((await readdir(dir)).filter((f) => f.includes(".partial"))).toEqual([]);

    const final = JSON.parse((await cli(["batches", "get", batchId, "--json"])).stdout);
    expect(final).toMatchObject({ state: "completed", counts: { completed: 2, failed: 1 } });
    expect(final.finish_time).toMatch(/^\d{4}-\d\d-\d\dT/);
  });

  it("submit --watch --output follows the batch to the end and writes the results", async () => {
    const file = await batchFile("watch.jsonl", 4);
    const p = start([
      "submit",
      file,
      "--endpoint",
      "http://127.0.0.1:9",
      "--watch",
      "--output",
      "w-out.jsonl",
      "--errors",
      "w-err.jsonl",
      "--json",
    ]);
    const [, batchId] = await p.waitFor(/batch ([0-9a-f-]{36}) created/);
    await p.waitFor(/in_progress: 0\/4 done/);
    await finish(batchId!);
    const r = await p.done;
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      batch_id: batchId,
      state: "completed",
      counts: { total: 4, completed: 3, failed: 1 },
      output_lines: 3,
      error_lines: 1,
    });
    // Not a terminal: plain progress lines on stderr, ending with the final one.
    expect(r.stderr).toMatch(/completed: 4\/4 done \(100%\)/);
    expect(
      jsonl(await readFile(path.join(dir, "w-out.jsonl"), "utf8")).map((l) => l.custom_id),
    ).toEqual(["c1", "c3", "c4"]);
    expect(jsonl(await readFile(path.join(dir, "w-err.jsonl"), "utf8"))).toHaveLength(1);
  });

  it("watch exits 0 when the batch finishes, with its final state", async () => {
    const file = await batchFile("w2.jsonl", 2);
    const sub = await cli(["submit", file, "--endpoint", "http://127.0.0.1:9", "--json"]);
    const batchId = (JSON.parse(sub.stdout) as { batch_id: string }).batch_id;
    const p = start(["watch", batchId]);
    await p.waitFor(/in_progress: 0\/2 done/);
    await finish(batchId);
    const r = await p.done;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      new RegExp(`batch ${batchId} completed: 2 total: 1 completed, 1 failed`),
    );
  });

  it("runs a batch end to end through a dispatcher and a loopback upstream", async () => {
    const upstream = await startUpstream();
    upstream.script("c2", [{ status: 400, body: '{"error":{"message":"no"}}' }]);
    const dispatcher = startTestDispatcher(t.url);
    try {
      const file = await batchFile("live.jsonl", 10);
      const r = await cli(
        [
          "submit",
          file,
          "--endpoint",
          upstream.url,
          "--output",
          "live-out.jsonl",
          "--errors",
          "live-err.jsonl",
          "--json",
        ],
        { OPENAI_API_KEY: "sk-test-key" }, // the fallback when neither --api-key nor FUSILLADE_API_KEY
      );
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({
        state: "completed",
        counts: { total: 10, completed: 9, failed: 1 },
      });
      const out = jsonl(await readFile(path.join(dir, "live-out.jsonl"), "utf8"));
      expect(out).toHaveLength(9);
      expect(out[0]).toMatchObject({
        custom_id: "c1",
        response: { status_code: 200 },
        error: null,
      });
      const err = jsonl(await readFile(path.join(dir, "live-err.jsonl"), "utf8"));
      expect(err[0]).toMatchObject({
        custom_id: "c2",
        response: { status_code: 400, body: { error: { message: "no" } } },
      });
      expect(upstream.of("c1")[0]!.authorization).toBe("Bearer sk-test-key");
    } finally {
      await dispatcher.stop(1_000);
      await upstream.close();
    }
  });

  it("lists, cancels, retries and manages files and limits", async () => {
    const file = await batchFile("ops.jsonl", 3);
    const sub = JSON.parse(
      (await cli(["submit", file, "--endpoint", "http://127.0.0.1:9", "--json"])).stdout,
    ) as { batch_id: string; file_id: string };

    const files = JSON.parse((await cli(["files", "list", "--json"])).stdout);
    expect(files.files.map((f: { id: string }) => f.id)).toContain(sub.file_id);
    expect((await cli(["files", "list"])).stdout).toMatch(/^ID\s+FILENAME\s+REQUESTS/);
    const got = JSON.parse((await cli(["files", "get", sub.file_id, "--json"])).stdout);
    expect(got).toMatchObject({ id: sub.file_id, filename: "ops.jsonl", template_count: 3 });

    const batches = JSON.parse(
      (await cli(["batches", "list", "--file", sub.file_id, "--json"])).stdout,
    );
    expect(batches.batches.map((b: { id: string }) => b.id)).toEqual([sub.batch_id]);

    const cancel = await cli(["cancel", sub.batch_id, "--json"]);
    expect(cancel.code, cancel.stderr).toBe(0);
    expect(JSON.parse(cancel.stdout)).toMatchObject({
      state: "cancelled",
      counts: { canceled: 3 },
    });
    const retry = await cli(["retry", sub.batch_id]);
    expect(retry.code).toBe(1);
    expect(retry.stderr).toMatch(/^fusillade: .*cannot be retried, but it can be resumed/);
    // resume: the cancelled requests run again, in a fresh window.
    const resume = await cli(["resume", sub.batch_id, "--completion-window", "2h", "--json"]);
    expect(resume.code, resume.stderr).toBe(0);
    const resumed = JSON.parse(resume.stdout);
    expect(resumed).toMatchObject({
      retried_count: 3,
      batch: { state: "in_progress", completion_window: "2h", counts: { pending: 3 } },
    });
    const left = Date.parse(resumed.batch.expire_time) - Date.now();
    expect(left).toBeGreaterThan(110 * 60_000);
    expect(left).toBeLessThanOrEqual(120 * 60_000);

    const del = await cli(["files", "delete", sub.file_id]);
    expect(del.code, del.stderr).toBe(0);
    expect((await cli(["files", "get", sub.file_id])).stderr).toMatch(
      /^fusillade: file .* not found/,
    );

    const set = await cli(["limits", "set", "gpt-test", "3", "--json"]);
    expect(set.code, set.stderr).toBe(0);
    expect(JSON.parse(set.stdout)).toMatchObject({
      model: "gpt-test",
      limit: 3,
      is_default: false,
    });
    const list = JSON.parse((await cli(["limits", "list", "--json"])).stdout);
    expect(list.model_limits).toContainEqual(
      expect.objectContaining({ model: "gpt-test", limit: 3 }),
    );
    const cleared = JSON.parse(
      (await cli(["limits", "set", "gpt-test", "default", "--json"])).stdout,
    );
    expect(cleared).toMatchObject({ model: "gpt-test", is_default: true });

    // Rates: set without touching the limit, listed, removed; none given is a usage error.
    const rated = await cli(["limits", "set", "gpt-test", "--rpm", "3000", "--tpm", "60000"]);
    expect(rated.code, rated.stderr).toBe(0);
    expect(rated.stdout).toMatch(
      /gpt-test: limit \d+ \(default\), 3000 requests\/min, 60000 tokens\/min/,
    );
    const listed = await cli(["limits", "list"]);
    expect(listed.stdout).toMatch(/RPM\s+TPM/);
    expect(listed.stdout).toMatch(
      /gpt-test\s+\d+ \(default\)\s+\d+\s+\d+\s+3,000\/min\s+60,000\/min/,
    );
    const unrated = JSON.parse(
      (await cli(["limits", "set", "gpt-test", "--rpm", "none", "--json"])).stdout,
    );
    expect(unrated).toMatchObject({ rpm: null, tpm: 60000 });
    expect((await cli(["limits", "set", "gpt-test"])).code).toBe(2);
    expect((await cli(["limits", "set", "gpt-test", "--rpm", "0"])).stderr).toMatch(/--rpm/);
  });

  it("fails with a message and a non-zero exit on bad input", async () => {
    const bad = await batchFile("bad.jsonl", 1, [
      '{"custom_id":"x","method":"POST","url":"/v1/x"}',
    ]);
    const r = await cli(["submit", bad, "--endpoint", "http://127.0.0.1:9"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^fusillade: line 2: body: is required/);

    // OpenAI's format requires custom_id and method: a line without either is refused.
    const noId = await batchFile("no-id.jsonl", 2, [
      '{"method":"POST","url":"/v1/x","body":{"model":"m"}}',
    ]);
    const r2 = await cli(["submit", noId, "--endpoint", "http://127.0.0.1:9"]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/^fusillade: line 3: custom_id: is required/);
    const noMethod = await batchFile("no-method.jsonl", 1, [
      '{"custom_id":"z","url":"/v1/x","body":{"model":"m"}}',
    ]);
    const r3 = await cli(["submit", noMethod, "--endpoint", "http://127.0.0.1:9"]);
    expect(r3.stderr).toMatch(/^fusillade: line 2: method: is required/);
    expect((await sql.query(`SELECT 1 FROM files WHERE filename LIKE 'no-%'`)).rows).toEqual([]);

    const missing = await cli(["submit", "nope.jsonl", "--endpoint", "http://127.0.0.1:9"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe("fusillade: cannot read nope.jsonl: no such file\n");

    const unknown = await cli(["status", "00000000-0000-4000-8000-000000000000"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^fusillade: batch .* not found/);

    // Without --endpoint the server's model routes decide; there are none here.
    const noEndpoint = await cli(["submit", bad]);
    expect(noEndpoint.code).toBe(1);
    expect(noEndpoint.stderr).toMatch(
      /no --endpoint and no route for model gpt-test: give --endpoint/,
    );

    const badMeta = await cli(["submit", bad, "--endpoint", "http://x", "--metadata", "novalue"]);
    expect(badMeta.code).toBe(2);
    expect(badMeta.stderr).toMatch(/key=value/);

    const down = await cli(["--server", "http://127.0.0.1:1", "status", "x"]);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^fusillade: cannot reach the server at http:\/\/127\.0\.0\.1:1/);
  });

  it("retry --completion-window moves a running batch's deadline; an unknown custom_id is an error", async () => {
    const file = await batchFile("window.jsonl", 2);
    const { batch_id: batchId } = JSON.parse(
      (await cli(["submit", file, "--endpoint", "http://127.0.0.1:9", "--json"])).stdout,
    ) as { batch_id: string };
    const r = await cli(["retry", batchId, "--completion-window", "1h"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /^nothing to run again: no request is failed or expired; batch .* is in_progress, expires \S+ \(completion window 1h\)/,
    );
    const status = JSON.parse((await cli(["status", batchId, "--json"])).stdout);
    const left = Date.parse(status.expire_time) - Date.now();
    expect(left).toBeGreaterThan(55 * 60_000);
    expect(left).toBeLessThanOrEqual(60 * 60_000);

    const unknown = await cli(["retry", batchId, "--custom-id", "nonexistent"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^fusillade: custom_ids\[0\]: .*"nonexistent" not found/);

    await finish(batchId);
    const done = await cli(["retry", batchId, "--custom-id", "c1", "--completion-window", "3h"]);
    expect(done.code).toBe(1);
    expect(done.stderr).toMatch(
      /^fusillade: batch .* is completed and has no failed or expired requests among those named/,
    );
    const one = await cli(["retry", batchId, "--custom-id", "c2"]);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(/^retried 1 request; batch .* is in_progress/);
  });

  it("requests lists a batch's requests by state and model; request shows one with its attempts", async () => {
    const file = await batchFile("reqs.jsonl", 3, [
      JSON.stringify({
        custom_id: "other",
        method: "POST",
        url: "/v1/x",
        body: { model: "gpt-other" },
      }),
    ]);
    const { batch_id: batchId } = JSON.parse(
      (await cli(["submit", file, "--endpoint", "http://127.0.0.1:9", "--json"])).stdout,
    ) as { batch_id: string };
    await sql.query(
      `UPDATE requests SET state = 'leased', lease_holder = 'd', lease_token = 7, attempt = 1,
         lease_expires_at = now() + interval '1 hour', updated_at = now()
       WHERE batch_id = $1 AND line = 2`,
      [batchId],
    );
    await finish(batchId);

    const table = await cli(["requests", batchId]);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(
      /^LINE\s+ID\s+CUSTOM_ID\s+MODEL\s+STATE\s+ATTEMPTS\s+STATUS\s+ERROR/,
    );
    expect(table.stdout.trim().split("\n")).toHaveLength(5);
    const failed = await cli(["requests", batchId, "--state", "failed", "--json"]);
    const failedRows = JSON.parse(failed.stdout).requests;
    expect(failedRows.map((r: { custom_id: string }) => r.custom_id)).toEqual(["c2"]);
    expect(failedRows[0]).toMatchObject({ state: "failed", error: { code: "http_error" } });
    const byModel = JSON.parse(
      (await cli(["requests", batchId, "--model", "gpt-other", "--json"])).stdout,
    );
    expect(byModel.requests.map((r: { custom_id: string }) => r.custom_id)).toEqual(["other"]);
    const badState = await cli(["requests", batchId, "--state", "done"]);
    expect(badState.code).toBe(2);
    expect(badState.stderr).toMatch(/--state must be one of pending, in_progress/);

    const one = await cli(["request", batchId, "--custom-id", "c2"]);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(/state\s+failed/);
    expect(one.stdout).toMatch(/error\s+http_error: upstream answered 500/);
    expect(one.stdout).toMatch(
      /ATTEMPT\s+STARTED\s+LATENCY\s+OUTCOME\s+STATUS\s+ERROR\n1\s+\S+\s+\d+ ms\s+failed\s+200\s+http_error/,
    );
    const id = failedRows[0].id as string;
    const json = JSON.parse((await cli(["request", id, "--json"])).stdout);
    expect(json).toMatchObject({
      id,
      custom_id: "c2",
      attempt_history: [{ attempt: 1, outcome: "failed" }],
    });
    const missing = await cli(["request", "00000000-0000-4000-8000-000000000000"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^fusillade: request .* not found/);

    // Errors only: no output line on stdout.
    const errs = await cli(["results", batchId, "--errors-only"]);
    expect(errs.code, errs.stderr).toBe(0);
    expect(jsonl(errs.stdout).map((l) => l.custom_id)).toEqual(["c2"]);
    const errFile = await cli([
      "results",
      batchId,
      "--errors-only",
      "--errors",
      "only-err.jsonl",
      "--json",
    ]);
    expect(errFile.code, errFile.stderr).toBe(0);
    expect(errFile.stdout).not.toContain('"custom_id"');
    expect(JSON.parse(errFile.stdout)).toMatchObject({ error_lines: 1, output_lines: 0 });
    expect(jsonl(await readFile(path.join(dir, "only-err.jsonl"), "utf8"))).toHaveLength(1);
  });

  it("submit warns of the classic mistakes before starting, and --strict refuses", async () => {
    const file = await batchFile("mistakes.jsonl", 2);
    // Lines say /v1/chat/completions and the endpoint ends in /v1; no API key; nothing listens on port 9.
    const args = ["submit", file, "--endpoint", "http://127.0.0.1:9/v1", "--json"];
    const warned = await cli(args);
    expect(warned.code, warned.stderr).toBe(0);
    expect(warned.stderr).toContain(
      "warning: --endpoint ends in /v1 and the lines' urls start with /v1/ too: requests would go to http://127.0.0.1:9/v1/v1/chat/completions",
    );
    expect(warned.stderr).toMatch(/warning: no API key/);
    expect(warned.stderr).toMatch(
      /warning: nothing answers at http:\/\/127\.0\.0\.1:9\/v1 .*ECONNREFUSED/,
    );

    const before = (await sql.query(`SELECT count(*)::int AS n FROM files`)).rows[0].n;
    const strict = await cli([...args, "--strict"]);
    expect(strict.code).toBe(1);
    expect(strict.stderr).toMatch(
      /^fusillade: not submitted \(--strict\):\n {2}- --endpoint ends in \/v1/,
    );
    expect((await sql.query(`SELECT count(*)::int AS n FROM files`)).rows[0].n).toBe(before);

    // A sound submission has nothing to say.
    const upstream = await startUpstream();
    try {
      const ok = await cli([
        "submit",
        file,
        "--endpoint",
        upstream.url,
        "--api-key",
        "sk-strict-1",
        "--strict",
      ]);
      expect(ok.code, ok.stderr).toBe(0);
      expect(ok.stderr).toBe("");
    } finally {
      await upstream.close();
    }
  });

  it("the live display says why requests fail and when a model is held", async () => {
    const file = await batchFile("why.jsonl", 4);
    const p = start([
      "submit",
      file,
      "--endpoint",
      "http://127.0.0.1:9",
      "--watch",
      "--interval",
      "500ms",
    ]);
    const [, batchId] = await p.waitFor(/batch ([0-9a-f-]{36}) created/);
    await p.waitFor(/in_progress: 0\/4 done/);
    await sql.query(
      `UPDATE requests SET state = 'failed', finished_at = now(), response_status = 404,
         error_code = 'http_error', error_message = 'upstream answered 404'
       WHERE batch_id = $1 AND line IN (1, 2)`,
      [batchId],
    );
    await sql.query(
      `UPDATE requests SET not_before = now() + interval '1 hour', error_code = 'network_error',
         error_message = 'connect ECONNREFUSED' WHERE batch_id = $1 AND line = 3`,
      [batchId],
    );
    await sql.query(
      `INSERT INTO model_limits (model, hold_until) VALUES ('gpt-test', now() + interval '1 hour')
       ON CONFLICT (model) DO UPDATE SET hold_until = excluded.hold_until`,
    );
    try {
      await p.waitFor(/errors: http_error 404 ×2, network_error ×1 retrying/);
      await p.waitFor(/gpt-test held until \d\d:\d\d:\d\d \(429\)/);
    } finally {
      await sql.query(`UPDATE model_limits SET hold_until = NULL WHERE model = 'gpt-test'`);
      await finish(batchId!);
    }
    expect((await p.done).code).toBe(0);
  });

  it("Ctrl-C of submit --watch --output names the commands that pick the batch up again", async () => {
    const file = await batchFile("int.jsonl", 2);
    const p = start([
      "submit",
      file,
      "--endpoint",
      "http://127.0.0.1:9",
      "--output",
      "int-out.jsonl",
    ]);
    const [, batchId] = await p.waitFor(/batch ([0-9a-f-]{36}) created/);
    await p.waitFor(/in_progress: 0\/2 done/);
    p.child.kill("SIGINT");
    const r = await p.done;
    expect(r.code).toBe(130);
    expect(r.stderr).toContain(`fusillade watch ${batchId} --output int-out.jsonl`);
    expect(r.stderr).toContain(`fusillade results ${batchId} --output int-out.jsonl`);

    // watch takes --output/--errors too.
    const w = start(["watch", batchId!, "--output", "int-out.jsonl", "--errors", "int-err.jsonl"]);
    await w.waitFor(/in_progress: 0\/2 done/);
    await finish(batchId!);
    const done = await w.done;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toMatch(
      /wrote 1 output lines to int-out.jsonl and 1 error lines to int-err.jsonl/,
    );
    expect(jsonl(await readFile(path.join(dir, "int-out.jsonl"), "utf8"))).toHaveLength(1);
  });

  it("says at once when the server goes away mid-watch, and how to re-attach when it gives up", async () => {
    const file = await batchFile("gone.jsonl", 2);
    const { batch_id: batchId } = JSON.parse(
      (await cli(["submit", file, "--endpoint", "http://127.0.0.1:9", "--json"])).stdout,
    ) as { batch_id: string };
    const port = Number(new URL(t.url).port);
    const proxy = await startTcpProxy("127.0.0.1", port);
    const p = start(["watch", batchId, "--reconnect-for", "3s"], {
      FUSILLADE_SERVER: proxy.via(t.url),
    });
    await p.waitFor(/in_progress: 0\/2 done/);
    await proxy.close();
    // Noticed while it still tries: the line comes before it gives up (waitFor fails if the
    // process exits first).
    await p.waitFor(/lost the connection to http:\/\/127\.0\.0\.1:\d+ .*; reconnecting…/);
    const r = await p.done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(
        `fusillade: gave up reconnecting to .* after \\d+s; batch ${batchId} keeps running on the server: follow it again with \`fusillade watch ${batchId}\``,
      ),
    );
  });

  it("--server pointing at another HTTP server says it is not a Fusillade control plane", async () => {
    const http1 = http.createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end("<html>a web site</html>");
    });
    const h2 = http2.createServer();
    h2.on("stream", (stream) => {
      stream.respond({ ":status": 404, "content-type": "text/html" });
      stream.end("not here");
    });
    await new Promise<void>((resolve) => http1.listen(0, "127.0.0.1", resolve));
    await new Promise<void>((resolve) => h2.listen(0, "127.0.0.1", resolve));
    try {
      for (const server of [http1, h2]) {
        const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
        const r = await cli(["--server", url, "status", "00000000-0000-4000-8000-000000000000"]);
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(
          new RegExp(
            `^fusillade: the server at ${url.replace(/\./g, "\\.")} is not a Fusillade control plane`,
          ),
        );
      }
    } finally {
      http1.closeAllConnections();
      await new Promise((resolve) => http1.close(resolve));
      await new Promise((resolve) => h2.close(resolve));
    }
  });

  it("batches list shows cancelled and expired counts, the file name, metadata and when a finished batch goes; submit takes a retry policy and a retention", async () => {
    const file = await batchFile("listed.jsonl", 3);
    const sub = await cli([
      "submit",
      file,
      "--endpoint",
      "http://127.0.0.1:9",
      "--metadata",
      "team=search",
      "--max-retries",
      "2",
      "--initial-backoff",
      "250ms",
      "--max-backoff",
      "2s",
      "--completion-window",
      "2h",
      "--retain",
      "7d",
      "--json",
    ]);
    expect(sub.code, sub.stderr).toBe(0);
    const { batch_id: batchId, file_id: fileId } = JSON.parse(sub.stdout);
    const status = JSON.parse((await cli(["status", batchId, "--json"])).stdout);
    expect(status).toMatchObject({
      completion_window: "2h",
      retry_policy: { max_retries: 2, initial_backoff_ms: 250, max_backoff_ms: 2000 },
    });
    const bad = await cli(["submit", file, "--endpoint", "http://x", "--max-retries", "many"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--max-retries.*integer from 0 to 100/);

    await cli(["cancel", batchId]);
    const list = await cli(["batches", "list", "--file", fileId]);
    expect(list.code, list.stderr).toBe(0);
    const [header, row] = list.stdout.split("\n");
    expect(header).toMatch(
      /^ID\s+STATE\s+TOTAL\s+OK\s+FAILED\s+CANCELLED\s+EXPIRED\s+FILE\s+METADATA\s+CREATED\s+DELETED AT$/,
    );
    expect(row).toMatch(
      new RegExp(
        `^${batchId}\\s+cancelled\\s+3\\s+0\\s+0\\s+3\\s+0\\s+listed\\.jsonl\\s+team=search\\s+\\d{4}-`,
      ),
    );
    const json = JSON.parse((await cli(["batches", "list", "--file", fileId, "--json"])).stdout);
    expect(json.batches[0]).toMatchObject({ filename: "listed.jsonl", counts: { canceled: 3 } });
    // Finished: it goes 7 days (--retain) after it finished, and the table says when.
    const { finish_time: finished, delete_time: deletes } = json.batches[0];
    expect(Date.parse(deletes) - Date.parse(finished)).toBe(7 * 24 * 3600_000);
    expect(row?.trimEnd().endsWith(` ${deletes}`), row).toBe(true);
  });

  it("routes set, list and delete; submit without --endpoint says which route each model takes", async () => {
    const keyFile = path.join(dir, "route.key");
    await writeFile(keyFile, "sk-cli-route\n", { mode: 0o600 });
    const set = await cli([
      "routes",
      "set",
      "route-m",
      "--endpoint",
      "http://127.0.0.1:9",
      "--api-key-file",
      keyFile,
    ]);
    expect(set.stderr).toBe("");
    expect(set.stdout).toBe("route-m → http://127.0.0.1:9 (with an API key)\n");
    expect((await cli(["routes", "set", "*", "--endpoint", "http://127.0.0.1:8"])).code).toBe(0);
    const list = await cli(["--json", "routes", "list"]);
    expect(list.stdout).not.toContain("sk-cli-route");
    expect(JSON.parse(list.stdout)).toEqual({
      routes: [
        { tenant: null, model: "*", endpoint: "http://127.0.0.1:8", has_api_key: false },
        { tenant: null, model: "route-m", endpoint: "http://127.0.0.1:9", has_api_key: true },
      ],
    });
    const mixed = path.join(dir, "routed.jsonl");
    await writeFile(
      mixed,
      ["route-m", "other-m"]
        .map((model, i) =>
          JSON.stringify({ custom_id: `r${i}`, method: "POST", url: "/v1/x", body: { model } }),
        )
        .join("\n"),
    );
    const submitted = await cli(["--json", "submit", mixed]);
    expect(submitted.code).toBe(0);
    expect(submitted.stderr).toBe(
      "other-m → http://127.0.0.1:8 (route '*')\nroute-m → http://127.0.0.1:9 (route route-m)\n",
    );
    const { file_id } = JSON.parse(submitted.stdout) as { file_id: string };
    const { rows } = await sql.query(
      `SELECT endpoint, api_key_id IS NOT NULL AS keyed FROM request_templates WHERE file_id = $1 ORDER BY line`,
      [file_id],
    );
    expect(rows).toEqual([
      { endpoint: "http://127.0.0.1:9", keyed: true },
      { endpoint: "http://127.0.0.1:8", keyed: false },
    ]);
    expect((await cli(["routes", "delete", "*"])).stdout).toBe("route of * deleted\n");
    const unrouted = await cli(["submit", mixed]);
    expect(unrouted.code).toBe(1);
    expect(unrouted.stderr).toMatch(/no route for model other-m/);
    expect((await cli(["routes", "delete", "route-m"])).code).toBe(0);
  });

  it("tenants set-weight and list round trip; a bad weight is refused naming the field", async () => {
    const set = await cli(["tenants", "set-weight", "acme", "3", "--json"]);
    expect(set.code, set.stderr).toBe(0);
    expect(JSON.parse(set.stdout)).toEqual({
      name: "acme",
      weight: 3,
      is_default: false,
      in_flight: 0,
      active_batches: 0,
    });
    expect((await sql.query(`SELECT weight FROM tenants WHERE name = 'acme'`)).rows).toEqual([
      { weight: 3 },
    ]);
    const human = await cli(["tenants", "set-weight", "beta", "1000"]);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toBe("beta: weight 1000, 0 unfinished batches, 0 claimed\n");

    const list = JSON.parse((await cli(["tenants", "list", "--json"])).stdout);
    expect(list.tenants).toContainEqual(expect.objectContaining({ name: "acme", weight: 3 }));
    expect(list.tenants).toContainEqual(expect.objectContaining({ name: "beta", weight: 1000 }));
    const table = await cli(["tenants", "list"]);
    expect(table.code, table.stderr).toBe(0);
    const rows = table.stdout.split("\n");
    expect(rows[0]).toMatch(/^TENANT\s+WEIGHT\s+IN FLIGHT\s+ACTIVE BATCHES$/);
    expect(rows).toContainEqual(expect.stringMatching(/^acme\s+3\s+0\s+0$/));

    // "default" clears it, as `limits set` does.
    const cleared = JSON.parse(
      (await cli(["tenants", "set-weight", "acme", "default", "--json"])).stdout,
    );
    expect(cleared).toMatchObject({ name: "acme", weight: 1, is_default: true });
    expect((await sql.query(`SELECT 1 FROM tenants WHERE name = 'acme'`)).rows).toEqual([]);

    // Refused by the CLI (usage, exit 2) before any call: the message names the argument.
    // Out of range, and not an integer (each spawn costs ~1 s: one of each kind).
    for (const bad of ["1001", "2.5"]) {
      const r = await cli(["tenants", "set-weight", "acme", bad]);
      expect(r.code, bad).toBe(2);
      expect(r.stderr, bad).toMatch(/argument 'weight'.*integer from 1 to 1000, or "default"/);
    }
    expect((await sql.query(`SELECT 1 FROM tenants WHERE name = 'acme'`)).rows).toEqual([]);
    // Refused by the server: INVALID_ARGUMENT naming the field, exit 1.
    const badName = await cli(["tenants", "set-weight", "no spaces", "2"]);
    expect(badName.code).toBe(1);
    expect(badName.stderr).toMatch(/^fusillade: tenant: must be 1–100 letters/);
  });

  it("submit --priority reaches the batch; a running batch shows its share of each model", async () => {
    await cli(["limits", "set", "gpt-share", "4"]);
    const low = await batchFile("share-low.jsonl", 3, [], "gpt-share");
    const high = await batchFile("share-high.jsonl", 3, [], "gpt-share");
    const subLow = await cli(["submit", low, "--endpoint", "http://127.0.0.1:9", "--json"]);
    expect(subLow.code, subLow.stderr).toBe(0);
    const lowId = JSON.parse(subLow.stdout).batch_id as string;
    // A negative class, then the high one (both spellings of the value).
    const neg = await cli([
      "submit",
      low,
      "--endpoint",
      "http://127.0.0.1:9",
      "--priority",
      "-5",
      "--json",
    ]);
    expect(neg.code, neg.stderr).toBe(0);
    expect(JSON.parse(neg.stdout)).toMatchObject({ priority: -5 });
    const negId = JSON.parse(neg.stdout).batch_id as string;
    await cli(["cancel", negId]);
    const subHigh = await cli([
      "submit",
      high,
      "--endpoint",
      "http://127.0.0.1:9",
      "--priority=7",
      "--json",
    ]);
    expect(subHigh.code, subHigh.stderr).toBe(0);
    expect(JSON.parse(subHigh.stdout)).toMatchObject({ priority: 7 });
    const highId = JSON.parse(subHigh.stdout).batch_id as string;
    expect(
      (
        await sql.query(`SELECT id, priority FROM batches WHERE id = ANY($1) ORDER BY priority`, [
          [lowId, highId, negId],
        ])
      ).rows,
    ).toEqual([
      { id: negId, priority: -5 },
      { id: lowId, priority: 0 },
      { id: highId, priority: 7 },
    ]);

    // Bad values are usage errors naming --priority; nothing is uploaded.
    const before = (await sql.query(`SELECT count(*)::int AS n FROM files`)).rows[0].n;
    for (const bad of ["-101", "1.5"]) {
      const r = await cli(["submit", high, "--endpoint", "http://127.0.0.1:9", "--priority", bad]);
      expect(r.code, bad).toBe(2);
      expect(r.stderr, bad).toMatch(/'--priority <n>'.*integer from -100 to 100/);
    }
    expect((await sql.query(`SELECT count(*)::int AS n FROM files`)).rows[0].n).toBe(before);

    // A dispatcher holds 1 slot and claims 2 of the model's requests (one
    // buffered for the slot): the higher class gets them.
    const res = await t.dispatch.sync({
      dispatcherId: "cli-share",
      slots: [{ model: "gpt-share", token: 0n, keep: 0, want: 1, room: 2 }],
    });
    expect(res.claims).toHaveLength(2);
    expect(res.grants).toEqual([expect.objectContaining({ slots: 1 })]);

    const got = JSON.parse((await cli(["batches", "get", highId, "--json"])).stdout);
    expect(got).toMatchObject({ id: highId, priority: 7 });
    expect(got.shares).toEqual([
      {
        model: "gpt-share",
        running: 1,
        model_running: 1,
        limit: 4,
        in_flight: 2,
        model_in_flight: 2,
        active_batches: 2,
        // The scripted dispatcher sent no pacing view.
        pacing: null,
      },
    ]);
    const other = JSON.parse((await cli(["status", lowId, "--json"])).stdout);
    expect(other.priority).toBe(0);
    expect(other.shares).toEqual([
      expect.objectContaining({ running: 0, model_running: 1, in_flight: 0 }),
    ]);

    // What runs against the limit; the buffered claim is queued with the pending request.
    const text = await cli(["status", highId]);
    expect(text.stdout).toMatch(/\n {2}priority {3}7\n/);
    expect(text.stdout).toMatch(/requests\s+3 total: 1 running, 2 queued\n/);
    expect(text.stdout).toContain("  shares     gpt-share 1/4 running (this batch 1, 2 batches)\n");
    // Priority 0 is not worth a line.
    expect((await cli(["status", lowId])).stdout).not.toContain("priority");
    const limits = await cli(["limits", "list"]);
    expect(limits.stdout).toMatch(
      /^MODEL\s+LIMIT\s+RUNNING\s+QUEUED\s+RPM\s+TPM\s+HELD UNTIL\s+PACING\n/,
    );
    expect(limits.stdout).toMatch(/\ngpt-share\s+4\s+1\s+5\s*\n/);

    // The watch line carries the same figures while the batch runs.
    const w = start(["watch", highId, "--interval", "1s"]);
    await w.waitFor(/running 1 · queued 2 \| .*gpt-share 1\/4 running \(this batch 1, 2 batches\)/);
    await finish(highId);
    await finish(lowId);
    const done = await w.done;
    expect(done.code, done.stderr).toBe(0);
    // Finished: no shares in the output.
    const final = JSON.parse((await cli(["batches", "get", highId, "--json"])).stdout);
    expect(final).toMatchObject({ state: "completed", priority: 7, shares: [] });
    expect((await cli(["status", highId])).stdout).not.toContain("shares");
  });

  // Debian's protobuf-compiler, protobuf-compiler-grpc, python3-grpcio, python3-protobuf.
  const hasPythonGrpc =
    existsSync("/usr/bin/protoc") &&
    existsSync("/usr/bin/grpc_python_plugin") &&
    spawnSync("/usr/bin/python3", ["-c", "import grpc, google.protobuf"]).status === 0;
  // CI installs the packages and sets this, so a broken install fails instead of skipping.
  if (process.env.FUSILLADE_REQUIRE_PYTHON_EXAMPLE === "1" && !hasPythonGrpc) {
    throw new Error(
      "FUSILLADE_REQUIRE_PYTHON_EXAMPLE=1 but Debian's Python gRPC packages are missing",
    );
  }

  it.skipIf(!hasPythonGrpc)(
    "the Python example submits over gRPC and prints progress",
    async () => {
      const file = await batchFile("py.jsonl", 3);
      const hostPort = t.url.replace(/^http:\/\//, "");
      const child = spawn(
        PYTHON_EXAMPLE,
        ["--server", hostPort, "--endpoint", "http://127.0.0.1:9", file],
        {
          cwd: dir,
          stdio: ["ignore", "pipe", "pipe"],
        },
      );
      const p = watchProcess(child);
      const [, batchId] = await p.waitFor(/batch ([0-9a-f-]{36}) created: 3 requests/);
      await p.waitFor(/in_progress 0\/3 done/);
      await finish(batchId!);
      const r = await p.done;
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/completed 3\/3 done: 2 completed, 1 failed/);
      expect(r.stdout).toMatch(/2 output lines, 1 error lines/);
    },
  );

  it.skipIf(!hasPythonGrpc)(
    "the Python example sends FUSILLADE_TOKEN to a server with tokens; without it, it is refused",
    async () => {
      const admin = "python-admin-token-0123456789abcdef";
      const guarded = await startTestControlPlane(
        { adminToken: admin, allowedEndpoints: parseAllowList("http://127.0.0.1:*", "test") },
        t.database,
      );
      try {
        const file = await batchFile("py-token.jsonl", 2);
        const hostPort = guarded.url.replace(/^http:\/\//, "");
        const args = ["--server", hostPort, "--endpoint", "http://127.0.0.1:9", file];
        const refused = watchProcess(
          spawn(PYTHON_EXAMPLE, args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] }),
        );
        const r = await refused.done;
        expect(r.code).not.toBe(0);
        expect(r.stderr).toMatch(/UNAUTHENTICATED|needs a token/);
        const allowed = watchProcess(
          spawn(PYTHON_EXAMPLE, args, {
            cwd: dir,
            stdio: ["ignore", "pipe", "pipe"],
            env: { ...process.env, FUSILLADE_TOKEN: admin },
          }),
        );
        const [, batchId] = await allowed.waitFor(/batch ([0-9a-f-]{36}) created: 2 requests/);
        await finish(batchId!);
        expect((await allowed.done).code).toBe(0);
      } finally {
        await guarded.stop();
      }
    },
  );
});
