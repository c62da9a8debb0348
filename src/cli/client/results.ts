/**
 * Downloads a batch's results (GetBatchResults) as OpenAI-format JSONL:
 * output lines to one file, error lines to another, either to stdout when
 * no file is named. How a named path is written (replaced whole, or written
 * into when it is a device or a FIFO): ./output-file.ts.
 */

import { linesOf, RESULT_LINES_PER_MESSAGE } from "../../client/result-lines.js";
import {
  GetBatchResultsRequest_Kind,
  GetBatchResultsResponse_Kind,
} from "../../gen/fusillade/v1/batch_service_pb.js";
import { CliError, type Connection, describeRpcError } from "./connection.js";
import { type OutputFile, openOutputFile, writeLine } from "./output-file.js";

export interface ResultTargets {
  /** Output lines (completed requests): a path, or undefined for stdout. */
  output?: string;
  /** Error lines (failed, expired, cancelled): a path, or undefined for stdout. */
  errors?: string;
  /** Only error lines (to `errors`, or stdout); no output lines are read. */
  errorsOnly?: boolean;
}

export interface ResultCounts {
  output: number;
  errors: number;
}

function stdoutSink(): OutputFile {
  return {
    write: (line) => writeLine(process.stdout, line),
    finish: async () => undefined,
    abort: async () => undefined,
  };
}

function fileSink(path: string): Promise<OutputFile> {
  return openOutputFile(path, (message, cause) => new CliError(message, 1, { cause }));
}

/** Streams every result line of the batch to its target; returns how many of each. */
export async function downloadResults(
  conn: Connection,
  batchId: string,
  targets: ResultTargets,
): Promise<ResultCounts> {
  if (targets.errorsOnly && targets.output !== undefined) {
    throw new CliError("--errors-only writes no output lines: drop --output (or --errors-only)", 2);
  }
  const out = targets.errorsOnly
    ? undefined
    : targets.output === undefined
      ? stdoutSink()
      : await fileSink(targets.output);
  let err: OutputFile;
  try {
    err =
      targets.errors === undefined
        ? targets.output === undefined
          ? (out ?? stdoutSink())
          : stdoutSink()
        : targets.errors === targets.output
          ? out!
          : await fileSink(targets.errors);
  } catch (e) {
    await out?.abort();
    throw e;
  }
  const sinks = out === undefined || out === err ? [err] : [out, err];
  const counts: ResultCounts = { output: 0, errors: 0 };
  try {
    const kind = targets.errorsOnly
      ? GetBatchResultsRequest_Kind.ERRORS
      : GetBatchResultsRequest_Kind.ALL;
    const answers = conn.batch.getBatchResults({
      batchId,
      kind,
      linesPerMessage: RESULT_LINES_PER_MESSAGE,
    });
    for await (const m of answers) {
      for (const l of linesOf(m)) {
        if (l.kind === GetBatchResultsResponse_Kind.OUTPUT) {
          counts.output++;
          await out?.write(l.line);
        } else {
          counts.errors++;
          await err.write(l.line);
        }
      }
    }
    for (const s of sinks) await s.finish();
    return counts;
  } catch (e) {
    for (const s of sinks) await s.abort();
    throw describeRpcError(e, conn.server);
  }
}
