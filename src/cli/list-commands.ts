/**
 * `fusillade files list|get|delete` and `batches list|get|delete`: what was
 * uploaded and started. This file parses flags; src/cli/client/ does the work.
 */
import type { Command } from "commander";
import { command, positiveInt, run } from "./cli-kit.js";
import {
  batchesDeleteAction,
  batchesListAction,
  filesDeleteAction,
  filesGetAction,
  filesListAction,
  statusAction,
} from "./client/actions.js";

/** --limit and --page-token, for the list commands. */
export function listOptions(c: Command): Command {
  return c
    .option("--limit <n>", "list at most this many", positiveInt, 50)
    .option("--page-token <token>", "continue a previous listing", "");
}

/** Registers `files` and `batches` with their subcommands on `program`. */
export function registerListCommands(program: Command): void {
  const files = command(program, "files", "list, show and delete uploaded files");
  listOptions(command(files, "list", "list files, newest first")).action(
    run(async (conn, g, o: { limit: number; pageToken: string }) => filesListAction(conn, g, o)),
  );
  command(files, "get", "show a file")
    .argument("<file>", "file id")
    .action(run(async (conn, g, file: string) => filesGetAction(conn, g, file)));
  command(files, "delete", "delete a file (batches started from it keep their requests)")
    .argument("<file>", "file id")
    .action(run(async (conn, g, file: string) => filesDeleteAction(conn, g, file)));

  const batches = command(program, "batches", "list and show batches");
  listOptions(command(batches, "list", "list batches, newest first"))
    .option("--file <id>", "only batches started from this file")
    .action(
      run(async (conn, g, o: { limit: number; pageToken: string; file?: string }) =>
        batchesListAction(conn, g, o),
      ),
    );
  command(batches, "get", "show a batch (same as status)")
    .argument("<batch>", "batch id")
    .action(run(async (conn, g, batch: string) => statusAction(conn, g, batch)));
  command(
    batches,
    "delete",
    "delete a finished batch with its requests, results and stored API keys (cancel a running one first)",
  )
    .argument("<batch>", "batch id")
    .action(run(async (conn, g, batch: string) => batchesDeleteAction(conn, g, batch)));
}
