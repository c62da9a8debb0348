/**
 * `fusillade submit`: streams a JSONL file to UploadFile in chunks (any
 * size: nothing is held in memory beyond one chunk), starts a batch from
 * it, and optionally follows it to the end and downloads its results.
 */
import { randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { basename } from "node:path";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import cliProgress from "cli-progress";
import {
  type UploadFileRequest,
  UploadFileRequestSchema,
} from "../../gen/fusillade/v1/batch_service_pb.js";
import type { Batch, File } from "../../gen/fusillade/v1/resources_pb.js";
import { CliError, type Connection } from "./connection.js";
import { preflight } from "./preflight.js";
import { routesForSubmit } from "./routes.js";
import { formatBytes } from "./views.js";

/** Bytes per UploadFile chunk message: well under any message limit. */
const CHUNK_BYTES = 1024 * 1024;

export interface SubmitInput {
  path: string;
  /** "": the server's model routes decide (docs/openai-api.md). */
  endpoint: string;
  apiKey: string | undefined;
  completionWindow: string | undefined;
  metadata: Record<string, string>;
  filename: string | undefined;
  /** Unset fields take the server's defaults. */
  retryPolicy: { maxRetries?: number; initialBackoffMs?: number; maxBackoffMs?: number };
  /** Priority class (-100..100); unset is the default class, 0. */
  priority?: number;
  /** Kept this long after it finishes ("7d"; "0" = until deleted); unset: the server's retention. */
  retain?: string;
  /** Refuse to upload when a preflight check warns. */
  strict: boolean;
  /** Draw an upload bar on stderr. */
  tty: boolean;
}

/** The header, then the file's bytes in chunks, as UploadFile messages. */
async function* uploadMessages(
  input: SubmitInput,
  onBytes: (n: number) => void,
): AsyncGenerator<UploadFileRequest> {
  yield create(UploadFileRequestSchema, {
    part: {
      case: "header",
      value: {
        requestId: randomUUID(),
        filename: input.filename ?? basename(input.path),
        endpoint: input.endpoint,
        // Routes carry their own keys.
        apiKey: input.endpoint === "" ? "" : (input.apiKey ?? ""),
      },
    },
  });
  for await (const chunk of createReadStream(input.path, { highWaterMark: CHUNK_BYTES })) {
    const bytes = chunk as Buffer;
    onBytes(bytes.byteLength);
    yield create(UploadFileRequestSchema, { part: { case: "chunk", value: bytes } });
  }
}

/** Uploads the file; returns the stored File. */
export async function uploadFile(conn: Connection, input: SubmitInput): Promise<File> {
  const info = await stat(input.path).catch((e: NodeJS.ErrnoException) => {
    throw new CliError(
      `cannot read ${input.path}: ${e.code === "ENOENT" ? "no such file" : e.message}`,
    );
  });
  if (!info.isFile()) throw new CliError(`${input.path} is not a file`);
  if (info.size === 0) throw new CliError(`${input.path} is empty`);
  let warnings: string[] = [];
  if (input.endpoint === "") {
    for (const line of await routesForSubmit(conn, input.path)) process.stderr.write(`${line}\n`);
  } else warnings = await preflight(input);
  if (warnings.length > 0 && input.strict) {
    throw new CliError(`not submitted (--strict):\n${warnings.map((w) => `  - ${w}`).join("\n")}`);
  }

  const bar =
    input.tty && info.size > CHUNK_BYTES
      ? new cliProgress.SingleBar(
          {
            format: " uploading {bar} {percentage}% | {sent} of {size}",
            stream: process.stderr,
            hideCursor: true,
            barsize: 30,
          },
          cliProgress.Presets.shades_classic,
        )
      : undefined;
  let sent = 0;
  bar?.start(info.size, 0, { sent: formatBytes(0), size: formatBytes(info.size) });
  try {
    const res = await conn.batch.uploadFile(
      uploadMessages(input, (n) => {
        sent += n;
        bar?.update(sent, { sent: formatBytes(sent) });
      }),
    );
    // After the upload: a file the server refuses gets its own message alone.
    bar?.stop();
    for (const w of warnings) process.stderr.write(`warning: ${w}\n`);
    return res.file!;
  } finally {
    bar?.stop();
  }
}

/** Starts a batch from an uploaded file (idempotent under retries: a fresh request id). */
export async function startBatch(
  conn: Connection,
  fileId: string,
  input: Pick<SubmitInput, "completionWindow" | "metadata" | "retryPolicy" | "priority" | "retain">,
): Promise<Batch> {
  const p = input.retryPolicy;
  const res = await conn.batch.createBatch({
    requestId: randomUUID(),
    fileId,
    completionWindow: input.completionWindow ?? "",
    metadata: input.metadata,
    priority: input.priority ?? 0,
    retention: input.retain ?? "",
    retryPolicy: {
      maxRetries: p.maxRetries,
      initialBackoff:
        p.initialBackoffMs === undefined ? undefined : durationFromMs(p.initialBackoffMs),
      maxBackoff: p.maxBackoffMs === undefined ? undefined : durationFromMs(p.maxBackoffMs),
    },
  });
  return res.batch!;
}
