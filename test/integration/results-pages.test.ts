/**
 * GetBatchResults reads a batch a byte-capped page at a time: with 10 MiB
 * response bodies, the control plane holds about one body while a reader
 * reads, not the batch; pages cut short by bytes are not mistaken for the
 * end by the server nor by the readers (the TypeScript client, the CLI's).
 *
 * Memory is measured in this process, which runs the control plane: after a
 * forced garbage collection, with the reader paused after its first line
 * (the server is then holding whatever its page holds), so the figure is
 * what is live, not garbage a collection had not reached yet.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import v8 from "node:v8";
import vm from "node:vm";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect } from "../../src/cli/client/connection.js";
import { downloadResults } from "../../src/cli/client/results.js";
import { createFusilladeClient, type FusilladeClient } from "../../src/client/index.js";
import { terminalRequestsPage } from "../../src/storage/results.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { poolQueries } from "../helpers/db.js";

const MiB = 1024 * 1024;
/** Each response body of the large batch. */
const BODY_BYTES = 10 * MiB;
/** Requests of the large batch: 160 MiB of bodies, one page of 500 rows without a byte cap. */
const ROWS = 16;
/** The server's page cap (the default FUSILLADE_MAX_PAGE_BYTES). */
const PAGE_BYTES = 3 * MiB;
/**
 * Most live memory (heap and buffers) this process may gain by the time a
 * reader gets its first line: the row being sent (its line, the encoded
 * message, socket buffers), the next row, which the server reads from
 * Postgres meanwhile (pg's hex text of it and the socket chunks it came in,
 * its Buffer), and the client's row (what it received, the line, its parse).
 * Measured at the first line: +59 to +91 MiB most runs, +123 to +126 MiB when
 * the sample fell while the next row was being parsed (about one run in four
 * beside two CPU burners; the first bound, 12 rows, missed that row and
 * failed CI there); +369 MiB without the cap (the page of 16 rows).
 */
const LIVE_BOUND = 16 * BODY_BYTES;

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

let t: TestControlPlane;
let sql: pg.Pool;
let client: FusilladeClient;
let dir: string;

beforeAll(async () => {
  t = await startTestControlPlane({ maxPageBytes: PAGE_BYTES });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  client = createFusilladeClient({ baseUrl: t.url });
  dir = await mkdtemp(path.join(os.tmpdir(), "fusillade-results-pages-"));
});

afterAll(async () => {
  client?.close();
  await sql?.end();
  await t?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/**
 * A batch of `rows` requests completed with `bodyBytes`-byte JSON bodies
 * (`{"d":"ccc…"}`, a letter per line), written straight into the table as
 * a dispatcher's reports would (Postgres compresses the repeated letter, so
 * this is quick).
 */
async function completedBatch(prefix: string, rows: number, bodyBytes: number): Promise<string> {
  const lines = Array.from({ length: rows }, (_, i) =>
    JSON.stringify({
      custom_id: `${prefix}-${i}`,
      method: "POST",
      url: "/v1/x",
      body: { model: "m" },
    }),
  );
  const file = await client.createFile({
    endpoint: "http://127.0.0.1:9",
    jsonl: lines.join("\n"),
  });
  const batchId = (await client.createBatch(file.id)).id;
  await sql.query(
    `UPDATE requests SET state = 'completed', finished_at = now(), updated_at = now(),
       response_status = 200,
       response_body = convert_to('{"d":"' || repeat(chr(97 + line % 26), $2 - 8) || '"}', 'UTF8')
     WHERE batch_id = $1`,
    [batchId, bodyBytes],
  );
  return batchId;
}

/** Heap and buffer bytes still reachable after a full collection. */
function liveBytes(): number {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

const ids = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);

describe("GetBatchResults pages capped by bytes", () => {
  let big: string;
  beforeAll(async () => {
    big = await completedBatch("big", ROWS, BODY_BYTES);
  });

  it("a page holds the rows that fit in the byte cap, and always one", async () => {
    const db = poolQueries(sql);
    /** Each page's row count and `more`, from line `after` on, at `cap` bytes and `limit` rows. */
    const pages = async (after: number, cap: number, limit = 500) => {
      const out: Array<[number, boolean]> = [];
      for (;;) {
        const page = await terminalRequestsPage(db, big, ["completed"], after, limit, cap);
        out.push([page.rows.length, page.more]);
        if (!page.more) return out;
        after = page.rows[page.rows.length - 1]!.line;
      }
    };
    // The last four requests, 10 MiB each: one a page at 3 MiB (a row larger than the cap
    // is a page of its own), two at 25 MiB, four at 1 GiB, and the row limit still holds.
    const tail = ROWS - 4;
    expect(await pages(tail, PAGE_BYTES)).toEqual([
      [1, true],
      [1, true],
      [1, true],
      [1, false],
    ]);
    expect(await pages(tail, 25 * MiB)).toEqual([
      [2, true],
      [2, false],
    ]);
    expect(await pages(tail, 1024 * MiB)).toEqual([[4, false]]);
    expect(await pages(tail, 1024 * MiB, 3)).toEqual([
      [3, true],
      [1, false],
    ]);
  });

  it("10 MiB bodies: the server holds about one while the TypeScript client reads every line once", async () => {
    const before = liveBytes();
    let during = 0;
    const seen: string[] = [];
    for await (const line of client.results(big)) {
      if (seen.length === 0) during = liveBytes() - before;
      expect((line.response!.body as { d: string }).d).toHaveLength(BODY_BYTES - 8);
      seen.push(line.custom_id!);
    }
    expect(seen).toEqual(ids("big", ROWS));
    expect(during).toBeLessThan(LIVE_BOUND);
  });

  it("the CLI's reader writes every line once when pages are cut short by bytes", async () => {
    // 1 MiB bodies, a 3 MiB cap: pages of 3 rows, far fewer than the 500-row limit.
    const batchId = await completedBatch("cli", 20, MiB);
    const out = path.join(dir, "out.jsonl");
    const conn = connect(t.url);
    try {
      const counts = await downloadResults(conn, batchId, {
        output: out,
        errors: path.join(dir, "errors.jsonl"),
      });
      expect(counts).toEqual({ output: 20, errors: 0 });
    } finally {
      conn.close();
    }
    const lines = (await readFile(out, "utf8")).trimEnd().split("\n");
    expect(lines.map((l) => (JSON.parse(l) as { custom_id: string }).custom_id)).toEqual(
      ids("cli", 20),
    );
  });
});
