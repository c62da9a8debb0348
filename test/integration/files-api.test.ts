/**
 * The file methods through the API on a real socket: validation that names
 * the field and line and leaves no rows, streamed uploads of 50,000 lines,
 * idempotency, pagination, reads and deletes.
 */

import { once } from "node:events";
import { watch } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { UploadFileHeaderSchema } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import type { RequestTemplateInputSchema } from "../../src/gen/fusillade/v1/resources_pb.js";

type HeaderInit = MessageInitShape<typeof UploadFileHeaderSchema>;
type TemplateInit = MessageInitShape<typeof RequestTemplateInputSchema>;

import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  // No reaper runs during these tests: the aborted-upload test watches the pool.
  t = await startTestControlPlane({ reapIntervalMs: 3_600_000 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

const enc = new TextEncoder();
const ENDPOINT = "http://upstream.test";
const MIB = 1024 * 1024;

/** A good OpenAI batch line. */
function line(i: number, model = "m-files"): string {
  return JSON.stringify({
    custom_id: `req-${i}`,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model, messages: [{ role: "user", content: `question ${i}` }] },
  });
}

/** `n` good lines; `patch(i)` may replace line i (1-based). */
function jsonlText(n: number, patch: (i: number) => string | undefined = () => undefined): string {
  return Array.from({ length: n }, (_, k) => patch(k + 1) ?? line(k)).join("\n");
}

/** Rows in files and request_templates. */
async function rowCounts(): Promise<{ files: number; templates: number }> {
  const { rows } = await sql.query<{ files: number; templates: number }>(
    `SELECT (SELECT count(*) FROM files)::int AS files,
            (SELECT count(*) FROM request_templates)::int AS templates`,
  );
  return rows[0]!;
}

/** What `p` rejected with; it must be a ConnectError. */
async function rejection(p: Promise<unknown>): Promise<ConnectError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, "the call should have failed").toBeInstanceOf(ConnectError);
  return e as ConnectError;
}

/** Runs `call`, expects INVALID_ARGUMENT mentioning every `parts`, and that no row was written. */
async function expectRejected(call: () => Promise<unknown>, ...parts: string[]) {
  const before = await rowCounts();
  const e = await rejection(call());
  expect(e.code, e.rawMessage).toBe(Code.InvalidArgument);
  for (const p of parts) expect(e.rawMessage).toContain(p);
  expect(await rowCounts()).toEqual(before);
  return e;
}

/** Splits `bytes` into chunks of `size` (lines end up split across chunks). */
function* chunked(bytes: Uint8Array, size: number): Generator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

/** UploadFile messages: the header, then `chunks`. */
async function* uploadMessages(header: HeaderInit, chunks: Iterable<Uint8Array>) {
  yield { part: { case: "header" as const, value: { endpoint: ENDPOINT, ...header } } };
  for (const c of chunks) yield { part: { case: "chunk" as const, value: c } };
}

function upload(text: string | Uint8Array, header: HeaderInit = {}, chunk = 64) {
  const bytes = typeof text === "string" ? enc.encode(text) : text;
  return t.batch.uploadFile(uploadMessages(header, chunked(bytes, chunk)));
}

describe("a rejected file leaves no rows", () => {
  const bad37 = jsonlText(50, (i) =>
    i === 37 ? '{"custom_id":"x","method":"POST","url":"/v1/x","body":' : undefined,
  );

  test("CreateFile: a malformed line 37 of 50 is INVALID_ARGUMENT naming line 37", async () => {
    const e = await expectRejected(
      () =>
        t.batch.createFile({
          filename: "bad37.jsonl",
          jsonl: enc.encode(bad37),
          endpoint: ENDPOINT,
        }),
      "line 37",
    );
    expect(e.rawMessage).not.toContain("line 36");
  });

  test("UploadFile: the same, with the bad line split across chunks", async () => {
    // 7-byte chunks: every line, line 37 included, spans several chunks.
    await expectRejected(() => upload(bad37, { filename: "bad37.jsonl" }, 7), "line 37");
  });

  test("UploadFile: a bad line after thousands of rows were already inserted", async () => {
    const text = jsonlText(2500, (i) =>
      i === 2400 ? '{"custom_id":"x","method":"POST","url":"/v1/x","body":{}}' : undefined,
    );
    await expectRejected(
      () => upload(text, { filename: "late.jsonl" }, MIB),
      "line 2400",
      "body.model",
    );
    const { rows } = await sql.query(`SELECT 1 FROM files WHERE filename = 'late.jsonl'`);
    expect(rows).toHaveLength(0);
  });

  test("a duplicate custom_id names both lines", async () => {
    const text = jsonlText(12, (i) => (i === 9 ? line(2) : undefined));
    // Line 9 repeats line 3's custom_id ("req-2").
    await expectRejected(
      () => t.batch.createFile({ jsonl: enc.encode(text), endpoint: ENDPOINT }),
      "line 9",
      "line 3",
      "req-2",
      "custom_id",
    );
    await expectRejected(() => upload(text, {}, 100), "line 9", "line 3");
  });

  test.each([
    [
      "no body.model",
      '{"custom_id":"x","method":"POST","url":"/v1/x","body":{"messages":[]}}',
      "body.model",
    ],
    [
      "a url that is not a path",
      '{"custom_id":"x","method":"POST","url":"https://elsewhere.test/v1/x","body":{"model":"m"}}',
      "url",
    ],
    ["no url", '{"custom_id":"x","method":"POST","body":{"model":"m"}}', "url"],
    ["no body", '{"custom_id":"x","method":"POST","url":"/v1/x"}', "body"],
    [
      "a bad method",
      '{"custom_id":"x","method":"HEAD","url":"/v1/x","body":{"model":"m"}}',
      "method",
    ],
    ["a JSON array", "[1]", "jsonl"],
    ["no custom_id", '{"method":"POST","url":"/v1/x","body":{"model":"m"}}', "custom_id"],
    ["no method", '{"custom_id":"x","url":"/v1/x","body":{"model":"m"}}', "method"],
  ])("a line with %s names the field and its line", async (_name, bad, field) => {
    const text = jsonlText(5, (i) => (i === 4 ? bad : undefined));
    await expectRejected(
      () => t.batch.createFile({ jsonl: enc.encode(text), endpoint: ENDPOINT }),
      "line 4",
      `${field}:`,
    );
  });

  test.each([
    ["", "endpoint"],
    ["upstream.test", "endpoint"],
    ["ftp://upstream.test", "endpoint"],
  ])("a missing or bad endpoint (%j) is named", async (endpoint, field) => {
    const text = jsonlText(3);
    await expectRejected(() => t.batch.createFile({ jsonl: enc.encode(text), endpoint }), field);
    await expectRejected(() => upload(text, { endpoint }), field);
  });

  const good: TemplateInit = {
    endpoint: ENDPOINT,
    path: "/v1/embeddings",
    body: '{"model":"emb","input":"x"}',
  };

  test.each([
    [{ endpoint: "" }, "templates[2].endpoint"],
    [{ endpoint: "nope" }, "templates[2].endpoint"],
    [{ path: "" }, "templates[2].path"],
    [{ path: "v1/x" }, "templates[2].path"],
    [{ method: "CONNECT" }, "templates[2].method"],
    [{ body: "{" }, "templates[2].body"],
    [{ body: "{}" }, "templates[2].model"],
    [{ customId: "a" }, "templates[2].custom_id"],
  ] as [TemplateInit, string][])("templates form: %j is named %s", async (patch, field) => {
    const templates = [
      { ...good, customId: "a" },
      { ...good, customId: "b" },
      { ...good, customId: "c", ...patch },
      { ...good, customId: "d" },
    ];
    await expectRejected(() => t.batch.createFile({ templates }), field);
  });

  test("a duplicate custom_id in the templates form names both templates", async () => {
    const templates = [0, 1, 2, 3].map((i) => ({ ...good, customId: i === 3 ? "t1" : `t${i}` }));
    await expectRejected(
      () => t.batch.createFile({ templates }),
      "templates[3].custom_id",
      "templates[1]",
    );
  });

  test.each([
    ["neither templates nor jsonl", {}, "templates"],
    [
      "both templates and jsonl",
      { templates: [good], jsonl: enc.encode(line(1)), endpoint: ENDPOINT },
      "templates",
    ],
    ["an endpoint with templates", { templates: [good], endpoint: ENDPOINT }, "endpoint"],
    ["an api_key with templates", { templates: [good], apiKey: "sk-x" }, "api_key"],
    ["only blank lines", { jsonl: enc.encode("\n\r\n  \n"), endpoint: ENDPOINT }, "no requests"],
    ["invalid UTF-8", { jsonl: Uint8Array.of(0x7b, 0xff, 0x7d), endpoint: ENDPOINT }, "UTF-8"],
  ])("CreateFile with %s is rejected", async (_name, req, part) => {
    await expectRejected(() => t.batch.createFile(req), part);
  });

  test.each([
    [
      "custom_id",
      { jsonl: '{"custom_id":"a\\u0000","method":"POST","url":"/v","body":{"model":"m"}}' },
      "line 1: custom_id",
    ],
    [
      "url",
      { jsonl: '{"custom_id":"x","method":"POST","url":"/v\\u0000","body":{"model":"m"}}' },
      "line 1: url",
    ],
    [
      "body.model",
      { jsonl: '{"custom_id":"x","method":"POST","url":"/v","body":{"model":"m\\u0000"}}' },
      "line 1: body.model",
    ],
    ["filename", { filename: "a\0.jsonl" }, "filename"],
    ["api_key", { apiKey: "sk-\0" }, "api_key"],
    ["request_id", { requestId: "r\0" }, "request_id"],
    ["endpoint", { endpoint: "http://upstream.test/\0" }, "endpoint"],
  ])(
    "a NUL character in %s is INVALID_ARGUMENT naming it (Postgres text cannot hold it)",
    async (_f, patch, named) => {
      const { jsonl, ...rest } = patch as { jsonl?: string; [k: string]: string | undefined };
      const req = { jsonl: enc.encode(jsonl ?? line(1)), endpoint: ENDPOINT, ...rest };
      await expectRejected(() => t.batch.createFile(req), named);
      const { jsonl: _j, ...header } = req;
      await expectRejected(() => upload(req.jsonl, header), named);
    },
  );

  test("a body nested 20,000 levels deep is INVALID_ARGUMENT naming its line and field; 500 levels are stored", async () => {
    const nested = (levels: number, i: number) =>
      `{"custom_id":"deep-${i}","method":"POST","url":"/v1/x","body":{"model":"m","x":${"[".repeat(levels)}${"]".repeat(levels)}}}`;
    const jsonl = enc.encode([line(1), nested(20_000, 2)].join("\n"));
    await expectRejected(
      () => t.batch.createFile({ jsonl, endpoint: ENDPOINT }),
      "line 2: body",
      "levels",
    );
    await expectRejected(() => upload(jsonl, { endpoint: ENDPOINT }), "line 2: body", "levels");
    const ok = await t.batch.createFile({ jsonl: enc.encode(nested(500, 3)), endpoint: ENDPOINT });
    expect(ok.file!.templateCount).toBe(1n);
  });

  test.each([
    ["a carriage return", "sk-live-0123\r\nX-Injected: 1", "character 13 is U+000D"],
    ["a line feed", "sk-live-0123\n", "character 13 is U+000A"],
    ["a tab", "sk-live-\t0123", "character 9 is U+0009"],
    ["DEL", "sk-live-0123\x7f", "character 13 is U+007F"],
    ["a C1 control", "sk-live-0123\u0085", "character 13 is U+0085"],
    ["a line separator", "sk-live-0123\u2028", "character 13 is U+2028"],
    ["a space", "sk-live 0123", "character 8 is U+0020"],
    ["a letter beyond ASCII", "sk-live-0123é", "character 13 is U+00E9"],
    ["a Bearer prefix", "Bearer sk-live-0123", 'without "Bearer "'],
    ["7 characters", "sk-0123", "is 7 characters long; an API key needs at least 8"],
  ])(
    "an api_key with %s is INVALID_ARGUMENT at upload, in every form, never quoting the key",
    async (_what, key, reason) => {
      const req = { jsonl: enc.encode(line(1)), endpoint: ENDPOINT, apiKey: key };
      const rejected = [
        await expectRejected(() => t.batch.createFile(req), "api_key: ", reason),
        await expectRejected(() => upload(req.jsonl, { apiKey: key }), "api_key: ", reason),
        await expectRejected(
          () => t.batch.createFile({ templates: [good, { ...good, apiKey: key }] }),
          "line 2: templates[1].api_key: ",
          reason,
        ),
      ];
      for (const e of rejected) expect(e.rawMessage).not.toContain("0123");
    },
  );

  test("an api_key of 8 printable ASCII characters is stored", async () => {
    const jsonl = enc.encode(line(1));
    const { file } = await t.batch.createFile({ jsonl, endpoint: ENDPOINT, apiKey: "sk-~!/+=" });
    expect(file!.templateCount).toBe(1n);
  });

  test("a template body gets the JSONL body's depth limit: 513 levels refused naming its line, 512 stored", async () => {
    const nested = (levels: number) => `${"[".repeat(levels)}${"]".repeat(levels)}`;
    const tpl = (levels: number) => ({ ...good, body: `{"model":"m","x":${nested(levels - 1)}}` });
    await expectRejected(
      () => t.batch.createFile({ templates: [good, tpl(513)] }),
      "line 2: templates[1].body: nests deeper than 512 levels",
    );
    await expectRejected(
      () => t.batch.createFile({ templates: [tpl(20_000)] }),
      "line 1: templates[0].body: nests deeper than 512 levels",
    );
    const { file } = await t.batch.createFile({ templates: [tpl(512)] });
    expect(file!.templateCount).toBe(1n);
    // A JSONL line holding the same 512-level body is accepted, one level more is not.
    const jsonlOf = (levels: number) =>
      enc.encode(`{"custom_id":"d","method":"POST","url":"/v1/x","body":${tpl(levels).body}}`);
    expect(
      (await t.batch.createFile({ jsonl: jsonlOf(512), endpoint: ENDPOINT })).file,
    ).toBeDefined();
    await expectRejected(
      () => t.batch.createFile({ jsonl: jsonlOf(513), endpoint: ENDPOINT }),
      "line 1: body: nests deeper than 512 levels",
    );
  });

  test("a NUL character in a template field is INVALID_ARGUMENT naming it", async () => {
    const tpl = { endpoint: ENDPOINT, path: "/v1/x", body: '{"model":"m"}' };
    await expectRejected(
      () => t.batch.createFile({ templates: [tpl, { ...tpl, model: "m\0" }] }),
      "templates[1].model",
    );
    await expectRejected(
      () => t.batch.createFile({ templates: [tpl, { ...tpl, apiKey: "k\0" }] }),
      "templates[1].api_key",
    );
    await expectRejected(
      () => t.batch.createFile({ templates: [{ ...tpl, customId: "\0" }] }),
      "templates[0].custom_id",
    );
  });

  test("UploadFile needs the header first, and only once", async () => {
    await expectRejected(
      () =>
        t.batch.uploadFile(
          (async function* () {
            yield { part: { case: "chunk" as const, value: enc.encode(line(1)) } };
          })(),
        ),
      "header",
    );
    await expectRejected(
      () =>
        t.batch.uploadFile(
          (async function* () {
            yield* uploadMessages({}, [enc.encode(`${line(1)}\n`)]);
            yield { part: { case: "header" as const, value: { endpoint: ENDPOINT } } };
          })(),
        ),
      "header",
    );
    await expectRejected(() => t.batch.uploadFile(uploadMessages({}, [])), "no requests");
  });
});

describe("an upload the client abandons", () => {
  test("is dropped with its spool, not stored as a partial file", async () => {
    // Uploads spool to os.tmpdir(); give this file's uploads a folder of their own to watch.
    const spoolRoot = await mkdtemp(path.join(os.tmpdir(), "fusillade-spool-test-"));
    const savedTmp = process.env.TMPDIR;
    process.env.TMPDIR = spoolRoot;
    const watcher = watch(spoolRoot);
    const spoolGone = async () => {
      while ((await readdir(spoolRoot)).length > 0) await once(watcher, "change");
    };
    try {
      const abort = new AbortController();
      let allSent: () => void = () => undefined;
      const sent = new Promise<void>((resolve) => {
        allSent = resolve;
      });
      const text = `${jsonlText(1500)}\n`;
      const call = t.batch.uploadFile(
        (async function* () {
          yield* uploadMessages(
            { filename: "abandoned.jsonl" },
            chunked(enc.encode(text), 64 * 1024),
          );
          allSent();
          // The client never ends the stream: it goes away.
          await new Promise((resolve) => abort.signal.addEventListener("abort", resolve));
        })(),
        { signal: abort.signal },
      );
      await sent;
      // Everything sent, stream still open: the rows go to the spool, not into a transaction.
      while ((await readdir(spoolRoot)).length === 0) await once(watcher, "change");
      abort.abort();
      const e = await rejection(call);
      expect(e.code).toBe(Code.Canceled);
      await spoolGone(); // the handler has finished and cleaned up
      const { rows } = await sql.query(`SELECT 1 FROM files WHERE filename = 'abandoned.jsonl'`);
      expect(rows).toHaveLength(0);
    } finally {
      watcher.close();
      if (savedTmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmp;
      await rm(spoolRoot, { recursive: true, force: true });
    }
  });
});

describe("an upload's rows sent to Postgres while it streams", () => {
  /** The control plane's COPY into request_templates, if one runs now. */
  const copyRunning = async () =>
    (
      await sql.query(
        `SELECT 1 FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'COPY request_templates%'
           AND state = 'active'`,
      )
    ).rowCount === 1;

  test("start with the stream, are given up when the client stalls, and the file is whole", async () => {
    // ~600 KiB: more than one block of rows, so the COPY starts before the stream ends.
    const n = 4000;
    const text = `${jsonlText(n)}\n`;
    let finish: () => void = () => undefined;
    const finished = new Promise<void>((resolve) => {
      finish = resolve;
    });
    const call = t.batch.uploadFile(
      (async function* () {
        yield* uploadMessages({ filename: "streamed.jsonl" }, chunked(enc.encode(text), 64 * 1024));
        // Everything sent; the client waits before ending the stream.
        await finished;
      })(),
    );
    // The rows are on their way into Postgres while the stream is still open...
    await expect.poll(copyRunning, { interval: 20, timeout: 10_000 }).toBe(true);
    // ...until the client has left it waiting (STALL_MS): the connection goes back.
    await expect.poll(copyRunning, { interval: 50, timeout: 10_000 }).toBe(false);
    const { rows: held } = await sql.query(
      `SELECT 1 FROM pg_stat_activity
       WHERE datname = current_database() AND state LIKE 'idle in transaction%'`,
    );
    expect(held).toHaveLength(0);
    finish();
    const { file } = await call;
    expect(file!.templateCount).toBe(BigInt(n));
    const { rows } = await sql.query(
      `SELECT count(*)::int AS n, count(DISTINCT custom_id)::int AS ids
       FROM request_templates WHERE file_id = $1`,
      [file!.id],
    );
    expect(rows[0]).toEqual({ n, ids: n });
  });

  test("an upload sent again with its request_id gives the first file, stored once", async () => {
    const n = 4000;
    const text = `${jsonlText(n)}\n`;
    const header = { filename: "again.jsonl", requestId: "upload-again-1" };
    const first = await upload(text, header, MIB);
    const second = await upload(text, header, MIB);
    expect(second.file!.id).toBe(first.file!.id);
    const { rows } = await sql.query(
      `SELECT (SELECT count(*)::int FROM files WHERE filename = 'again.jsonl') AS files,
              (SELECT count(*)::int FROM request_templates WHERE file_id = $1) AS templates`,
      [first.file!.id],
    );
    expect(rows[0]).toEqual({ files: 1, templates: n });
  });

  test("five uploads at once, more than there are lanes, are each stored whole", async () => {
    const n = 3000;
    const files = await Promise.all(
      [0, 1, 2, 3, 4].map((k) =>
        upload(
          `${jsonlText(n, (i) => line(k * n + i - 1))}\n`,
          { filename: `at-once-${k}.jsonl` },
          128 * 1024,
        ),
      ),
    );
    for (const [k, { file }] of files.entries()) {
      const { rows } = await sql.query(
        `SELECT count(*)::int AS n,
                count(*) FILTER (WHERE custom_id = 'req-' || ($2 + line - 1))::int AS in_place
         FROM request_templates WHERE file_id = $1`,
        [file!.id, k * n],
      );
      expect(rows[0]).toEqual({ n, in_place: n });
    }
  });

  test("a fast upload is stored whole, each row once", async () => {
    const n = 6000;
    const { file } = await upload(`${jsonlText(n)}\n`, { filename: "fast.jsonl" }, MIB);
    const { rows } = await sql.query(
      `SELECT count(*)::int AS n, count(DISTINCT custom_id)::int AS ids, min(line) AS first,
              max(line) AS last
       FROM request_templates WHERE file_id = $1`,
      [file!.id],
    );
    expect(rows[0]).toEqual({ n, ids: n, first: 1, last: n });
    expect(file!.templateCount).toBe(BigInt(n));
  });
});

describe("storing files", () => {
  test("text with backslashes, tabs, line breaks and \\N is stored as sent, in both forms", async () => {
    // The rows reach Postgres as COPY text, where these characters are escapes.
    const awkward = "a\\b\tc\nd\re \\N \\. \\\\ \u00e9\u{1f600}";
    const jsonlBody = { model: "m-esc", messages: [{ role: "user", content: awkward }] };
    const fromJsonl = await t.batch.createFile({
      filename: "escapes.jsonl",
      jsonl: enc.encode(
        JSON.stringify({ custom_id: awkward, method: "POST", url: "/v1/x", body: jsonlBody }),
      ),
      endpoint: ENDPOINT,
    });
    // A template's body is stored as given, its whitespace (raw tab, CR, LF) included.
    const templateBody = `{\t"model": "m-esc",\r\n "note": ${JSON.stringify(awkward)}}`;
    const fromTemplates = await t.batch.createFile({
      filename: "escapes-templates.jsonl",
      templates: [{ customId: awkward, endpoint: ENDPOINT, path: "/v1/x\\y", body: templateBody }],
    });
    const read = async (fileId: string) =>
      (
        await sql.query(`SELECT custom_id, path, body FROM request_templates WHERE file_id = $1`, [
          fileId,
        ])
      ).rows;
    expect(await read(fromJsonl.file!.id)).toEqual([
      { custom_id: awkward, path: "/v1/x", body: JSON.stringify(jsonlBody) },
    ]);
    expect(await read(fromTemplates.file!.id)).toEqual([
      { custom_id: awkward, path: "/v1/x\\y", body: templateBody },
    ]);
  });

  test("CreateFile with jsonl: counts, size, models, and the rows as sent", async () => {
    const text = [line(0, "b-model"), "", line(1, "a-model"), line(2, "b-model")].join("\r\n");
    const { file } = await t.batch.createFile({
      filename: "small.jsonl",
      jsonl: enc.encode(text),
      endpoint: `${ENDPOINT}/`,
    });
    expect(file).toMatchObject({
      filename: "small.jsonl",
      templateCount: 3n,
      sizeBytes: BigInt(enc.encode(text).length),
      models: ["a-model", "b-model"],
    });
    const { rows } = await sql.query(
      `SELECT line, custom_id, endpoint, method, path, model FROM request_templates
       WHERE file_id = $1 ORDER BY line`,
      [file!.id],
    );
    // Line numbers are those of the file: the blank line 2 is skipped but counted.
    expect(rows).toEqual([
      {
        line: 1,
        custom_id: "req-0",
        endpoint: ENDPOINT,
        method: "POST",
        path: "/v1/chat/completions",
        model: "b-model",
      },
      {
        line: 3,
        custom_id: "req-1",
        endpoint: ENDPOINT,
        method: "POST",
        path: "/v1/chat/completions",
        model: "a-model",
      },
      {
        line: 4,
        custom_id: "req-2",
        endpoint: ENDPOINT,
        method: "POST",
        path: "/v1/chat/completions",
        model: "b-model",
      },
    ]);
  });

  test("CreateFile with templates: size_bytes counts the bodies' UTF-8 bytes", async () => {
    const body = '{"model":"emb","input":"héllo 😀"}';
    const { file } = await t.batch.createFile({
      templates: [
        { endpoint: ENDPOINT, path: "/v1/embeddings", body },
        { endpoint: ENDPOINT, path: "/v1/embeddings", body, model: "explicit" },
      ],
    });
    expect(file?.templateCount).toBe(2n);
    expect(file?.sizeBytes).toBe(BigInt(2 * Buffer.byteLength(body)));
    expect(file?.models).toEqual(["emb", "explicit"]);
  });

  test("a 50,000-line JSONL streamed through UploadFile in 1 MiB chunks", async () => {
    const n = 50_000;
    const text = `${jsonlText(n)}\n`;
    const bytes = enc.encode(text);
    const chunks = [...chunked(bytes, MIB)];
    // 1 MiB boundaries fall inside lines.
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.slice(0, -1).some((c) => c[c.length - 1] !== 0x0a)).toBe(true);

    const started = performance.now();
    const { file } = await t.batch.uploadFile(
      uploadMessages({ filename: "big.jsonl", apiKey: "sk-big-file" }, chunks),
    );
    const ms = performance.now() - started;
    console.info(
      `UploadFile: ${n} lines, ${(bytes.length / MIB).toFixed(1)} MiB in ${chunks.length} chunks: ${ms.toFixed(0)} ms`,
    );

    expect(file?.templateCount).toBe(BigInt(n));
    expect(file?.sizeBytes).toBe(BigInt(bytes.length));
    const { rows } = await sql.query<{
      rows: number;
      ids: number;
      matching: number;
      lines: number;
    }>(
      `SELECT count(*)::int AS rows, count(DISTINCT custom_id)::int AS ids,
              count(*) FILTER (WHERE custom_id = 'req-' || (line - 1))::int AS matching,
              max(line)::int AS lines
       FROM request_templates WHERE file_id = $1`,
      [file!.id],
    );
    expect(rows[0]).toEqual({ rows: n, ids: n, matching: n, lines: n });
  });
});

describe("idempotency", () => {
  test("CreateFile: the same request_id gives the same file and no second one", async () => {
    const req = {
      requestId: "idem-create-1",
      filename: "idem.jsonl",
      jsonl: enc.encode(jsonlText(3)),
      endpoint: ENDPOINT,
    };
    const first = await t.batch.createFile(req);
    const before = await rowCounts();
    const again = await t.batch.createFile(req);
    expect(again.file?.id).toBe(first.file?.id);
    expect(await rowCounts()).toEqual(before);
  });

  test("CreateFile: concurrent calls with one request_id make one file", async () => {
    const req = {
      requestId: "idem-create-2",
      filename: "idem-concurrent.jsonl",
      jsonl: enc.encode(jsonlText(200)),
      endpoint: ENDPOINT,
    };
    const results = await Promise.all([1, 2, 3].map(() => t.batch.createFile(req)));
    expect(new Set(results.map((r) => r.file?.id)).size).toBe(1);
    const { rows } = await sql.query(`SELECT id FROM files WHERE idempotency_key = $1`, [
      req.requestId,
    ]);
    expect(rows).toEqual([{ id: results[0]!.file!.id }]);
  });

  test("UploadFile: the same request_id gives the same file", async () => {
    const text = jsonlText(4);
    const first = await upload(text, { requestId: "idem-upload", filename: "idem-up.jsonl" });
    const before = await rowCounts();
    const again = await upload(text, { requestId: "idem-upload", filename: "idem-up.jsonl" });
    expect(again.file?.id).toBe(first.file?.id);
    expect(await rowCounts()).toEqual(before);
  });

  test("a rejected file does not use up its request_id", async () => {
    await expectRejected(
      () =>
        t.batch.createFile({ requestId: "idem-bad", jsonl: enc.encode("{"), endpoint: ENDPOINT }),
      "line 1",
    );
    const { file } = await t.batch.createFile({
      requestId: "idem-bad",
      jsonl: enc.encode(jsonlText(2)),
      endpoint: ENDPOINT,
    });
    expect(file?.templateCount).toBe(2n);
  });
});

describe("reading, listing and deleting files", () => {
  test("ListFiles pages through every file exactly once, newest first", async () => {
    const mine: string[] = [];
    for (let i = 0; i < 5; i++) {
      const { file } = await t.batch.createFile({
        filename: `page-${i}.jsonl`,
        jsonl: enc.encode(line(i)),
        endpoint: ENDPOINT,
      });
      mine.push(file!.id);
    }
    const seen: string[] = [];
    const tokens: string[] = [];
    let token = "";
    do {
      const page = await t.batch.listFiles({ pageSize: 2, pageToken: token });
      expect(page.files.length).toBeLessThanOrEqual(2);
      seen.push(...page.files.map((f) => f.id));
      token = page.nextPageToken;
      tokens.push(token);
    } while (token !== "");
    expect(tokens[tokens.length - 1]).toBe("");
    expect(new Set(seen).size).toBe(seen.length);
    const { rows } = await sql.query<{ id: string }>(
      `SELECT id FROM files ORDER BY created_at DESC, id DESC`,
    );
    expect(seen).toEqual(rows.map((r) => r.id));
    // The five just made come first, the last made first.
    expect(seen.slice(0, 5)).toEqual([...mine].reverse());
  });

  test("ListFiles with page_size 2 over exactly 5 files (a fresh database)", async () => {
    const other = await startTestControlPlane();
    try {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        const { file } = await other.batch.createFile({
          jsonl: enc.encode(line(i)),
          endpoint: ENDPOINT,
        });
        ids.push(file!.id);
      }
      const pages: string[][] = [];
      const tokens: string[] = [];
      let token = "";
      do {
        const page = await other.batch.listFiles({ pageSize: 2, pageToken: token });
        pages.push(page.files.map((f) => f.id));
        token = page.nextPageToken;
        tokens.push(token);
      } while (token !== "");
      expect(pages.map((p) => p.length)).toEqual([2, 2, 1]);
      expect(pages.flat()).toEqual([...ids].reverse());
      expect(tokens.map((tk) => tk === "")).toEqual([false, false, true]);
    } finally {
      await other.close();
    }
  });

  test("a bad page_token or page_size is INVALID_ARGUMENT", async () => {
    const forged = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const { nextPageToken } = await t.batch.listFiles({ pageSize: 1 });
    expect(nextPageToken).not.toBe("");
    const [ts, id] = JSON.parse(Buffer.from(nextPageToken, "base64url").toString()) as string[];
    for (const pageToken of [
      "not-a-token",
      "!!!",
      forged([1, 2, 3]),
      forged({ a: 1 }),
      forged(["someday", id]),
      forged([ts, "not-a-uuid"]),
      forged([ts, 5]),
      forged(["2025-02-30 10:00:00+00", id]),
    ]) {
      const e = await rejection(t.batch.listFiles({ pageToken }));
      expect(e.code, `${pageToken}: ${e.rawMessage}`).toBe(Code.InvalidArgument);
      expect(e.rawMessage).toContain("page_token");
    }
    const e = await rejection(t.batch.listFiles({ pageSize: -1 }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toContain("page_size");
  });

  test("GetFile, then DeleteFile: NOT_FOUND after, and its batch still readable", async () => {
    const { file } = await t.batch.createFile({
      filename: "to-delete.jsonl",
      jsonl: enc.encode(jsonlText(3)),
      endpoint: ENDPOINT,
    });
    const got = await t.batch.getFile({ fileId: file!.id });
    expect(got.file).toEqual(file);
    const { batch } = await t.batch.createBatch({ fileId: file!.id });

    await t.batch.deleteFile({ fileId: file!.id });
    for (const call of [
      () => t.batch.getFile({ fileId: file!.id }),
      () => t.batch.deleteFile({ fileId: file!.id }),
      () => t.batch.createBatch({ fileId: file!.id }),
    ]) {
      expect((await rejection(call())).code).toBe(Code.NotFound);
    }
    const { rows } = await sql.query(`SELECT 1 FROM request_templates WHERE file_id = $1`, [
      file!.id,
    ]);
    expect(rows).toHaveLength(0);

    const after = await t.batch.getBatch({ batchId: batch!.id });
    expect(after.batch?.counts?.total).toBe(3n);
    expect(after.batch?.counts?.pending).toBe(3n);
    expect(after.batch?.fileId).toBe(file!.id); // the batch still says where it came from
    const requests = await t.batch.listBatchRequests({ batchId: batch!.id });
    expect(requests.requests.map((r) => r.customId)).toEqual(["req-0", "req-1", "req-2"]);
  });

  test("unknown and malformed file ids are NOT_FOUND", async () => {
    for (const fileId of ["00000000-0000-4000-8000-000000000000", "nope", ""]) {
      expect((await rejection(t.batch.getFile({ fileId }))).code).toBe(Code.NotFound);
      expect((await rejection(t.batch.deleteFile({ fileId }))).code).toBe(Code.NotFound);
    }
  });
});
