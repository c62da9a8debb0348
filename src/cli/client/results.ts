/**
 * Downloads a batch's results (GetBatchResults) as OpenAI-format JSONL:
 * output lines to one file, error lines to another, either to stdout when
 * no file is named. Files are written under a temporary name and renamed
 * when complete, so a file that exists is whole.
 */

import { once } from "node:events";
import { createWriteStream, type WriteStream } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { GetBatchResultsResponse_Kind } from "../../gen/fusillade/v1/batch_service_pb.js";
import { CliError, type Connection, describeRpcError } from "./connection.js";

export interface ResultTargets {
  /** Output lines (completed requests): a path, or undefined for stdout. */
  output?: string;
  /** Error lines (failed, expired, cancelled): a path, or undefined for stdout. */
  errors?: string;
}

export interface ResultCounts {
  output: number;
  errors: number;
}

interface Sink {
  write(line: string): Promise<void>;
  finish(): Promise<void>;
  abort(): Promise<void>;
}

/** Writes with backpressure: waits for 'drain' when the stream's buffer is full. */
async function writeLine(stream: NodeJS.WritableStream, line: string): Promise<void> {
  if (!stream.write(`${line}\n`)) await once(stream, "drain");
}

function stdoutSink(): Sink {
  return {
    write: (line) => writeLine(process.stdout, line),
    finish: async () => undefined,
    abort: async () => undefined,
  };
}

function fileSink(path: string): Sink {
  const partial = `${path}.partial`;
  const stream: WriteStream = createWriteStream(partial);
  let failed: Error | undefined;
  stream.on("error", (e) => {
    failed = e;
  });
  const check = () => {
    if (failed) throw new CliError(`cannot write ${path}: ${failed.message}`);
  };
  return {
    // once(stream, "drain") in writeLine rejects if the stream fails meanwhile.
    write: async (line) => {
      check();
      await writeLine(stream, line);
    },
    finish: async () => {
      check();
      stream.end();
      await once(stream, "close");
      check();
      await rename(partial, path);
    },
    abort: async () => {
      stream.destroy();
      await rm(partial, { force: true });
    },
  };
}

/** Streams every result line of the batch to its target; returns how many of each. */
export async function downloadResults(
  conn: Connection,
  batchId: string,
  targets: ResultTargets,
): Promise<ResultCounts> {
  const out = targets.output === undefined ? stdoutSink() : fileSink(targets.output);
  const err =
    targets.errors === undefined
      ? targets.output === undefined
        ? out
        : stdoutSink()
      : targets.errors === targets.output
        ? out
        : fileSink(targets.errors);
  const sinks = out === err ? [out] : [out, err];
  const counts: ResultCounts = { output: 0, errors: 0 };
  try {
    for await (const m of conn.batch.getBatchResults({ batchId })) {
      if (m.kind === GetBatchResultsResponse_Kind.OUTPUT) {
        counts.output++;
        await out.write(m.line);
      } else {
        counts.errors++;
        await err.write(m.line);
      }
    }
    for (const s of sinks) await s.finish();
    return counts;
  } catch (e) {
    for (const s of sinks) await s.abort();
    throw describeRpcError(e, conn.server);
  }
}
