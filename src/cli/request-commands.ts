/**
 * Client commands about a batch's requests: `retry`, `resume`, `requests`
 * and `request`. This file parses flags; src/cli/client/ does the work.
 */
import type { Command } from "commander";
import { collect, command, run } from "./cli-kit.js";
import { retryAction } from "./client/actions.js";
import { CliError } from "./client/connection.js";
import { parseRequestState, requestAction, requestsAction } from "./client/requests.js";

interface RetryFlags {
  customId: string[];
  requestId: string[];
  completionWindow?: string;
  resume?: boolean;
}

/** What `retry` and `resume` ask of RetryBatch. */
function selectionOf(o: RetryFlags, resume: boolean) {
  return {
    customIds: o.customId,
    requestIds: o.requestId,
    completionWindow: o.completionWindow,
    resume,
  };
}

function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new CliError("--limit must be an integer ≥ 0", 2);
  return n;
}

/** Registers retry, resume, requests and request on `program`. */
export function registerRequestCommands(program: Command): void {
  const selection = (c: Command) =>
    c
      .option("--custom-id <id>", "only this request (by custom_id); repeat for more", collect, [])
      .option(
        "--request-id <id>",
        "only this request (by id, or its result line's batch_req_… id); repeat for more",
        collect,
        [],
      )
      .option(
        "--completion-window <duration>",
        "a new completion window from now, e.g. 24h (also moves a running batch's deadline)",
      );

  selection(command(program, "retry", "send a batch's failed and expired requests back to pending"))
    .argument("<batch>", "batch id")
    .option("--resume", "also cancelled requests, reopening a cancelled batch (= `resume`)")
    .addHelpText(
      "after",
      "\nA batch that was cancelled is finished with `fusillade resume BATCH`. A custom_id or\nrequest id the batch does not have is an error.",
    )
    .action(
      run(async (conn, g, batch: string, o: RetryFlags) =>
        retryAction(conn, g, batch, selectionOf(o, o.resume === true)),
      ),
    );

  selection(
    command(
      program,
      "resume",
      "run a cancelled or expired batch's unfinished requests again (cancelled, expired, failed), with a fresh completion window",
    ),
  )
    .argument("<batch>", "batch id")
    .action(
      run(async (conn, g, batch: string, o: RetryFlags) =>
        retryAction(conn, g, batch, selectionOf(o, true)),
      ),
    );

  command(program, "requests", "list a batch's requests: line, custom_id, state, status, error")
    .argument("<batch>", "batch id")
    .option(
      "--state <state>",
      "only requests in this state (pending, in_progress, completed, failed, cancelled, expired); repeat for more",
      collect,
      [],
    )
    .option("--model <model>", "only requests of this model; repeat for more", collect, [])
    .option("--limit <n>", "show at most this many (0: all)", nonNegativeInt, 100)
    .action(
      run(async (conn, g, batch: string, o: { state: string[]; model: string[]; limit: number }) =>
        requestsAction(conn, g.json, batch, {
          states: o.state.map(parseRequestState),
          models: o.model,
          limit: o.limit,
        }),
      ),
    );

  command(program, "request", "show one request: its state, response or error, and its attempts")
    .argument(
      "<id>",
      "request id: the ID of `requests`, or the id of its result line (batch_req_…); with --custom-id, the batch id",
    )
    .option("--custom-id <id>", "the request of batch <id> with this custom_id")
    .action(
      run(async (conn, g, id: string, o: { customId?: string }) =>
        requestAction(
          conn,
          g.json,
          o.customId === undefined ? { requestId: id } : { batchId: id, customId: o.customId },
        ),
      ),
    );
}
