/**
 * Spooling of streamed uploads: rows are validated and written to a temp
 * file while the client streams, and inserted in one short transaction once
 * the stream has ended. Without it, every slow upload would hold one of the
 * control plane's pooled database connections for as long as its client
 * takes to send (20 slow clients would stall the API).
 *
 * The spool holds no credentials: the upload's API key is the same for every
 * row and is added back when the rows are read.
 */
import { once } from "node:events";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import type { TemplateRow } from "../domain/templates.js";

export interface Spool {
  rows: number;
  /** The spooled rows, each with `apiKey` set back. */
  read(apiKey: string | null): AsyncIterable<TemplateRow>;
  dispose(): Promise<void>;
}

/** Drains `rows` into a temp file (validation errors surface here, before any database work). */
export async function spool(rows: AsyncIterable<TemplateRow>): Promise<Spool> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "fusillade-upload-"));
  const file = path.join(dir, "rows.jsonl");
  const dispose = () => rm(dir, { recursive: true, force: true });
  let count = 0;
  try {
    const out = createWriteStream(file, { mode: 0o600 });
    const failed = once(out, "error").then(([e]) => {
      throw e;
    });
    failed.catch(() => undefined);
    for await (const { apiKey: _key, ...row } of rows) {
      count++;
      if (!out.write(`${JSON.stringify(row)}\n`)) await Promise.race([once(out, "drain"), failed]);
    }
    out.end();
    await Promise.race([once(out, "finish"), failed]);
  } catch (e) {
    await dispose();
    throw e;
  }
  return {
    rows: count,
    async *read(apiKey) {
      const lines = createInterface({
        input: createReadStream(file),
        crlfDelay: Number.POSITIVE_INFINITY,
      });
      for await (const line of lines) {
        if (line !== "") yield { ...(JSON.parse(line) as Omit<TemplateRow, "apiKey">), apiKey };
      }
    },
    dispose,
  };
}
