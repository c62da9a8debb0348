/** Reading GetBatchResults answers, for the TypeScript client and the CLI. */
import type {
  GetBatchResultsResponse,
  GetBatchResultsResponse_Kind,
} from "../gen/fusillade/v1/batch_service_pb.js";

/** Lines asked for in each GetBatchResults answer: each answer costs the transport ~25 µs. */
export const RESULT_LINES_PER_MESSAGE = 500;

/**
 * The lines of one answer: its `lines`, or the answer itself from a server
 * that predates lines_per_message (a line an answer).
 */
export function linesOf(
  m: GetBatchResultsResponse,
): ReadonlyArray<{ kind: GetBatchResultsResponse_Kind; line: string; customId: string }> {
  return m.lines.length > 0 ? m.lines : [m];
}
