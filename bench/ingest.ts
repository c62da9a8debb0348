/**
 * Scenario "ingest": a 50,000-line JSONL file (~1 KiB a line) through streamed
 * UploadFile, against Postgres `COPY … FROM STDIN` of the same rows into the
 * same table (request_templates, plus its files row) on one connection: the
 * database's own ceiling for writing those rows. Both files are kept for the
 * CreateBatch figures (./batch-start.ts).
 */
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import pg from "pg";
import copyStreams from "pg-copy-streams";
import { requestBody } from "./ceiling.js";
import { type Bench, jsonl, round, scaled, since, upload } from "./common.js";

export const INGEST_MODEL = "bench-ingest";
/** Body padding: ~1 KiB lines, as in the earlier recorded runs. */
const PAD = 900;
/** The API key every uploaded row carries (the upload header's). */
/** The one stored API key the copied rows point at (what UploadFile stores: an id per row). */
const API_KEY_ID = "00000000-0000-4000-8000-00000000b0b0";

export interface IngestOutcome {
  figures: Record<string, unknown>;
  /** The file written by UploadFile / by COPY (same rows). */
  uploadedFileId: string;
  copiedFileId: string;
  lines: number;
}

/** A value in COPY's text format. */
function copyValue(v: string | number | null): string {
  if (v === null) return "\\N";
  return String(v).replace(/[\\\t\n\r]/g, (c) =>
    c === "\\" ? "\\\\" : c === "\t" ? "\\t" : c === "\n" ? "\\n" : "\\r",
  );
}

/** The rows UploadFile stores for `jsonl(lines, [model], pad)`, as COPY text, in 1 MiB-ish chunks. */
function copyChunks(fileId: string, lines: number, endpoint: string): Buffer[] {
  const filler = "x".repeat(PAD);
  const chunks: Buffer[] = [];
  let part: string[] = [];
  let bytes = 0;
  for (let i = 0; i < lines; i++) {
    const row = [
      fileId,
      i + 1,
      `req-${i}`,
      endpoint,
      "POST",
      "/v1/chat/completions",
      JSON.stringify(requestBody(INGEST_MODEL, filler)),
      INGEST_MODEL,
      API_KEY_ID,
    ]
      .map(copyValue)
      .join("\t");
    part.push(row);
    bytes += row.length + 1;
    if (bytes >= 1024 * 1024) {
      chunks.push(Buffer.from(`${part.join("\n")}\n`));
      part = [];
      bytes = 0;
    }
  }
  if (part.length > 0) chunks.push(Buffer.from(`${part.join("\n")}\n`));
  return chunks;
}

/** UploadFile vs COPY of the same 50,000 rows. */
export async function ingestScenario(bench: Bench, endpoint: string): Promise<IngestOutcome> {
  const lines = scaled(50_000, 500);
  const content = jsonl(lines, [INGEST_MODEL], PAD);

  let t0 = performance.now();
  const uploadedFileId = await upload(bench.batch, content, endpoint);
  const uploadMs = since(t0);

  const copiedFileId = randomUUID();
  const chunks = copyChunks(copiedFileId, lines, endpoint);
  const client = new pg.Client({ connectionString: bench.databaseUrl });
  await client.connect();
  let copyMs: number;
  try {
    t0 = performance.now();
    await client.query("BEGIN");
    await client.query(
      `INSERT INTO files (id, filename, template_count, size_bytes, models)
       VALUES ($1, 'bench-copy.jsonl', $2, $3, $4)`,
      [copiedFileId, lines, content.length, [INGEST_MODEL]],
    );
    await pipeline(
      Readable.from(chunks),
      client.query(
        copyStreams.from(
          `COPY request_templates (file_id, line, custom_id, endpoint, method, path, body, model, api_key_id) FROM STDIN`,
        ),
      ),
    );
    await client.query("COMMIT");
    copyMs = since(t0);
  } finally {
    await client.end();
  }

  const uploadRate = lines / (uploadMs / 1000);
  const copyRate = lines / (copyMs / 1000);
  return {
    uploadedFileId,
    copiedFileId,
    lines,
    figures: {
      lines,
      mib: round(content.length / 2 ** 20, 1),
      upload_file: {
        seconds: round(uploadMs / 1000),
        lines_per_s: Math.round(uploadRate),
        mib_per_s: round(content.length / 2 ** 20 / (uploadMs / 1000), 1),
      },
      copy: { seconds: round(copyMs / 1000), lines_per_s: Math.round(copyRate) },
      ratio_to_copy: round(uploadRate / copyRate, 3),
    },
  };
}
