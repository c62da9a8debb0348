/**
 * Client commands (submit, watch, results, status, cancel, retry, files,
 * batches, limits), registered on the program. This file parses flags;
 * src/cli/client/ does the work. Exit codes: 0 success (for watch: the
 * batch finished, whatever its requests' outcomes), 1 an error (printed as
 * `fusillade: <message>`), 2 a usage error, 130 interrupted while watching.
 */
import { readFileSync } from "node:fs";
import { type Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { parseDuration } from "../domain/duration.js";
import {
  batchesListAction,
  cancelAction,
  filesDeleteAction,
  filesGetAction,
  filesListAction,
  type Globals,
  limitsListAction,
  limitsSetAction,
  resultsAction,
  retryAction,
  statusAction,
  submitAction,
  watchAction,
} from "./client/actions.js";
import {
  CliError,
  type Connection,
  connect,
  DEFAULT_SERVER,
  describeRpcError,
} from "./client/connection.js";
import { tokensCreateAction, tokensListAction, tokensRevokeAction } from "./client/tokens.js";

/** Plain-mode progress lines (not a terminal): at most one per this. */
const DEFAULT_PLAIN_INTERVAL = "5s";

/** Usage errors exit 2 (help and --version still exit 0). */
function usageExit(err: CommanderError): never {
  throw err.exitCode === 0 ? err : new CommanderError(2, err.code, err.message);
}

function collectMetadata(value: string, previous: Record<string, string>): Record<string, string> {
  const m = /^([^=]+)=(.*)$/s.exec(value);
  if (!m) throw new InvalidArgumentError("must look like key=value");
  return { ...previous, [m[1]!]: m[2]! };
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new InvalidArgumentError("must be a positive integer");
  return n;
}

function limitValue(value: string): number | "default" {
  if (value === "default") return value;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0 || n > 2 ** 31 - 1) {
    throw new InvalidArgumentError(
      'must be a non-negative integer (0 pauses the model), or "default"',
    );
  }
  return n;
}

function duration(value: string): number {
  const ms = parseDuration(value);
  if (ms === undefined || ms <= 0)
    throw new InvalidArgumentError("must be a duration such as 5s or 1m");
  return ms;
}

/**
 * Wraps an action: connects with the global flags, closes the connection
 * after, and turns RPC errors into one-line messages.
 */
function run<A extends unknown[]>(
  fn: (conn: Connection, g: Globals, ...args: A) => Promise<void>,
): (...args: unknown[]) => Promise<void> {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const g = cmd.optsWithGlobals() as Globals;
    // `fusillade results … | head` closes our stdout early: that is not an error.
    process.stdout.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") process.exit(0);
    });
    const conn = connect(g.server, g.token, readCa(g.ca));
    let failure: unknown;
    try {
      await fn(conn, g, ...(args.slice(0, -1) as A));
    } catch (e) {
      failure = describeRpcError(e, conn.server);
    } finally {
      conn.close();
    }
    if (failure === undefined) return;
    if (failure instanceof CliError && failure.exitCode !== 1) {
      process.stderr.write(`fusillade: ${failure.message}\n`);
      process.exit(failure.exitCode);
    }
    throw failure;
  };
}

/** The PEM file of --ca, read once per command. */
function readCa(file: string | undefined): string | undefined {
  if (file === undefined || file === "") return undefined;
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new CliError(`--ca: cannot read ${file} (${(e as Error).message})`);
  }
}

/** A client command: usage errors exit 2. */
function command(parent: Command, name: string, description: string): Command {
  return parent.command(name).description(description).exitOverride(usageExit);
}

const watchIntervalOption = () =>
  new Option("--interval <duration>", "when not on a terminal: least time between progress lines")
    .default(duration(DEFAULT_PLAIN_INTERVAL), DEFAULT_PLAIN_INTERVAL)
    .argParser(duration);

interface SubmitFlags {
  endpoint: string;
  apiKey?: string;
  openaiApiKey?: string;
  completionWindow?: string;
  metadata: Record<string, string>;
  filename?: string;
  watch?: boolean;
  output?: string;
  errors?: string;
  interval: number;
}

/** Registers the client commands on `program`. */
export function registerClientCommands(program: Command): void {
  program
    .addOption(
      new Option("--server <url>", "control plane URL")
        .env("FUSILLADE_SERVER")
        .default(DEFAULT_SERVER),
    )
    .addOption(
      new Option(
        "--token <token>",
        "API token (docs/trust.md); prefer the variable: flags show in ps",
      ).env("FUSILLADE_TOKEN"),
    )
    .addOption(
      new Option("--ca <file>", "PEM CA certificates to trust for an https:// server").env(
        "FUSILLADE_CA",
      ),
    )
    .option("--json", "print machine-readable JSON on stdout (for scripts)", false)
    .configureHelp({ showGlobalOptions: true });

  command(program, "submit", "upload a JSONL batch file and start a batch from it")
    .argument("<file>", "OpenAI batch input: one {custom_id, method, url, body} object per line")
    .requiredOption(
      "--endpoint <url>",
      "base URL each line's url is appended to, e.g. https://api.openai.com",
    )
    .addOption(
      new Option(
        "--api-key <key>",
        "sent as Authorization: Bearer <key> (else env OPENAI_API_KEY)",
      ).env("FUSILLADE_API_KEY"),
    )
    // The fallback credential: commander reads the variable, like FUSILLADE_API_KEY above.
    .addOption(new Option("--openai-api-key <key>").env("OPENAI_API_KEY").hideHelp())
    .option(
      "--completion-window <duration>",
      "time allowed before unfinished requests expire (server default 24h)",
    )
    .option("--metadata <key=value>", "batch metadata; repeat for more", collectMetadata, {})
    .option("--filename <name>", "name to store the file under (default: the file's name)")
    .option("--watch", "follow progress until the batch finishes")
    .option("--output <file>", "with --watch: write output lines (completed requests) here")
    .option("--errors <file>", "with --watch: write error lines (failed, expired, cancelled) here")
    .addOption(watchIntervalOption())
    .addHelpText(
      "after",
      "\n--output or --errors imply --watch. With --json, prints {batch_id, file_id, …} (after\nthe batch finishes when watching; progress goes to stderr).",
    )
    .action(
      run(async (conn, g, file: string, o: SubmitFlags) => {
        const watch = o.watch === true || o.output !== undefined || o.errors !== undefined;
        await submitAction(
          conn,
          g,
          {
            path: file,
            endpoint: o.endpoint,
            apiKey: o.apiKey ?? o.openaiApiKey,
            completionWindow: o.completionWindow,
            metadata: o.metadata,
            filename: o.filename,
            tty: process.stderr.isTTY === true,
          },
          { watch, targets: { output: o.output, errors: o.errors }, intervalMs: o.interval },
        );
      }),
    );

  command(program, "watch", "show a batch's progress until it finishes (exit 0 when it does)")
    .argument("<batch>", "batch id")
    .addOption(watchIntervalOption())
    .action(
      run(async (conn, g, batch: string, o: { interval: number }) => {
        await watchAction(conn, g, batch, { intervalMs: o.interval });
      }),
    );

  command(program, "results", "download a batch's output and error lines (OpenAI JSONL formats)")
    .argument("<batch>", "batch id")
    .option("--output <file>", "write output lines (completed requests) here instead of stdout")
    .option(
      "--errors <file>",
      "write error lines (failed, expired, cancelled) here instead of stdout",
    )
    .action(
      run(async (conn, g, batch: string, o: { output?: string; errors?: string }) => {
        await resultsAction(conn, g, batch, { output: o.output, errors: o.errors });
      }),
    );

  command(program, "status", "show a batch's state and counts")
    .argument("<batch>", "batch id")
    .action(run(async (conn, g, batch: string) => statusAction(conn, g, batch)));

  command(program, "cancel", "cancel a batch: pending requests at once, running ones stopped")
    .argument("<batch>", "batch id")
    .action(run(async (conn, g, batch: string) => cancelAction(conn, g, batch)));

  command(program, "retry", "send a batch's failed and expired requests back to pending")
    .argument("<batch>", "batch id")
    .option("--custom-id <id>", "only this request (by custom_id); repeat for more", collect, [])
    .option("--request-id <id>", "only this request (by id); repeat for more", collect, [])
    .option("--completion-window <duration>", "new window from now, for an expired batch")
    .action(
      run(
        async (
          conn,
          g,
          batch: string,
          o: { customId: string[]; requestId: string[]; completionWindow?: string },
        ) =>
          retryAction(conn, g, batch, {
            customIds: o.customId,
            requestIds: o.requestId,
            completionWindow: o.completionWindow,
          }),
      ),
    );

  const listOptions = (c: Command) =>
    c
      .option("--limit <n>", "list at most this many", positiveInt, 50)
      .option("--page-token <token>", "continue a previous listing", "");

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

  const tokens = command(program, "tokens", "API tokens: who may call the API (admin)");
  command(tokens, "create", "make a token; prints its secret once")
    .requiredOption("--role <role>", "client, dispatcher or admin")
    .option("--tenant <name>", "the tenant of a client token (required for clients)")
    .option("--name <label>", "a label for people")
    .action(
      run(async (conn, g, o: { role: string; tenant?: string; name?: string }) =>
        tokensCreateAction(conn, g.json, o),
      ),
    );
  command(tokens, "list", "list tokens (never their secrets)").action(
    run(async (conn, g) => tokensListAction(conn, g.json)),
  );
  command(tokens, "revoke", "revoke a token at once")
    .argument("<id>", "the token's id (from tokens list)")
    .action(run(async (conn, g, id: string) => tokensRevokeAction(conn, g.json, id)));

  const limits = command(program, "limits", "per-model concurrency limits, fleet-wide");
  listOptions(command(limits, "list", "list models, their limits and current use")).action(
    run(async (conn, g, o: { limit: number; pageToken: string }) => limitsListAction(conn, g, o)),
  );
  command(limits, "set", 'set a model\'s limit (0 pauses it; "default" returns it to the default)')
    .argument("<model>", "model name, as in the request bodies")
    .argument("<limit>", 'requests in flight at most, or "default"', limitValue)
    .action(
      run(async (conn, g, model: string, limit: number | "default") =>
        limitsSetAction(conn, g, model, limit),
      ),
    );
}
