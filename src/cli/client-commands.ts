/**
 * Client commands (submit, watch, results, status, cancel, retry, files,
 * batches, tokens, limits, tenants), registered on the program. This file parses flags;
 * src/cli/client/ does the work. Exit codes: 0 success (for watch: the
 * batch finished, whatever its requests' outcomes), 1 an error (printed as
 * `fusillade: <message>`), 2 a usage error, 130 interrupted while watching.
 */
import { type Command, Option } from "commander";
import {
  backoffValue,
  collectMetadata,
  command,
  DEFAULT_PLAIN_INTERVAL,
  duration,
  limitValue,
  positiveInt,
  priorityValue,
  rateValue,
  retriesValue,
  run,
} from "./cli-kit.js";
import {
  batchesDeleteAction,
  batchesListAction,
  cancelAction,
  filesDeleteAction,
  filesGetAction,
  filesListAction,
  resultsAction,
  statusAction,
  submitAction,
  watchAction,
} from "./client/actions.js";
import { DEFAULT_SERVER } from "./client/connection.js";
import { limitsListAction, limitsSetAction } from "./client/limits.js";
import { tokensCreateAction, tokensListAction, tokensRevokeAction } from "./client/tokens.js";
import { registerRequestCommands } from "./request-commands.js";
import { registerRouteCommands } from "./route-commands.js";
import { registerTenantCommands } from "./tenant-commands.js";

const watchIntervalOption = () =>
  new Option("--interval <duration>", "when not on a terminal: least time between progress lines")
    .default(duration(DEFAULT_PLAIN_INTERVAL), DEFAULT_PLAIN_INTERVAL)
    .argParser(duration);

const reconnectOption = () =>
  new Option(
    "--reconnect-for <duration>",
    "how long to keep reconnecting when the server goes away",
  )
    .default(60_000, "1m")
    .argParser(duration);

interface SubmitFlags {
  endpoint?: string;
  apiKey?: string;
  openaiApiKey?: string;
  completionWindow?: string;
  metadata: Record<string, string>;
  filename?: string;
  watch?: boolean;
  output?: string;
  errors?: string;
  interval: number;
  reconnectFor: number;
  maxRetries?: number;
  initialBackoff?: number;
  maxBackoff?: number;
  priority?: number;
  strict?: boolean;
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
    .option(
      "--endpoint <url>",
      "base URL each line's url is appended to, e.g. https://api.openai.com (default: the server's model routes, `fusillade routes`)",
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
    .option(
      "--max-retries <n>",
      "attempts after the first for a retriable failure (server default 5)",
      retriesValue,
    )
    .option(
      "--initial-backoff <duration>",
      "first retry delay, doubled each attempt (server default 1s)",
      backoffValue,
    )
    .option("--max-backoff <duration>", "cap on the retry delay (server default 60s)", backoffValue)
    .option(
      "--priority <n>",
      "priority class, -100 to 100 (default 0): a busy model's slots go to the highest class first (docs/fair-share.md)",
      priorityValue,
    )
    .option(
      "--strict",
      "refuse to submit when a check finds a likely mistake (endpoint path, API key, endpoint down)",
    )
    .option("--filename <name>", "name to store the file under (default: the file's name)")
    .option("--watch", "follow progress until the batch finishes")
    .option("--output <file>", "with --watch: write output lines (completed requests) here")
    .option("--errors <file>", "with --watch: write error lines (failed, expired, cancelled) here")
    .addOption(watchIntervalOption())
    .addOption(reconnectOption())
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
            endpoint: o.endpoint ?? "",
            apiKey: o.apiKey ?? o.openaiApiKey,
            completionWindow: o.completionWindow,
            metadata: o.metadata,
            filename: o.filename,
            retryPolicy: {
              maxRetries: o.maxRetries,
              initialBackoffMs: o.initialBackoff,
              maxBackoffMs: o.maxBackoff,
            },
            priority: o.priority,
            strict: o.strict === true,
            tty: process.stderr.isTTY === true,
          },
          {
            watch,
            targets: { output: o.output, errors: o.errors },
            intervalMs: o.interval,
            reconnectForMs: o.reconnectFor,
          },
        );
      }),
    );

  command(program, "watch", "show a batch's progress until it finishes (exit 0 when it does)")
    .argument("<batch>", "batch id")
    .option("--output <file>", "then write its output lines (completed requests) here")
    .option("--errors <file>", "then write its error lines (failed, expired, cancelled) here")
    .addOption(watchIntervalOption())
    .addOption(reconnectOption())
    .action(
      run(
        async (
          conn,
          g,
          batch: string,
          o: { interval: number; reconnectFor: number; output?: string; errors?: string },
        ) => {
          await watchAction(conn, g, batch, {
            intervalMs: o.interval,
            reconnectForMs: o.reconnectFor,
            targets: { output: o.output, errors: o.errors },
          });
        },
      ),
    );

  command(program, "results", "download a batch's output and error lines (OpenAI JSONL formats)")
    .argument("<batch>", "batch id")
    .option("--output <file>", "write output lines (completed requests) here instead of stdout")
    .option(
      "--errors <file>",
      "write error lines (failed, expired, cancelled) here instead of stdout",
    )
    .option("--errors-only", "only error lines (to --errors, else stdout)")
    .action(
      run(
        async (
          conn,
          g,
          batch: string,
          o: { output?: string; errors?: string; errorsOnly?: boolean },
        ) => {
          await resultsAction(conn, g, batch, {
            output: o.output,
            errors: o.errors,
            errorsOnly: o.errorsOnly === true,
          });
        },
      ),
    );

  command(program, "status", "show a batch's state and counts")
    .argument("<batch>", "batch id")
    .action(run(async (conn, g, batch: string) => statusAction(conn, g, batch)));

  command(program, "cancel", "cancel a batch: pending requests at once, running ones stopped")
    .argument("<batch>", "batch id")
    .action(run(async (conn, g, batch: string) => cancelAction(conn, g, batch)));

  registerRequestCommands(program);

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
  command(
    batches,
    "delete",
    "delete a finished batch with its requests, results and stored API keys (cancel a running one first)",
  )
    .argument("<batch>", "batch id")
    .action(run(async (conn, g, batch: string) => batchesDeleteAction(conn, g, batch)));

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

  const limits = command(
    program,
    "limits",
    "per-model concurrency limits and rates (requests and tokens per minute), fleet-wide",
  );
  listOptions(command(limits, "list", "list models, their limits, rates and current use")).action(
    run(async (conn, g, o: { limit: number; pageToken: string }) => limitsListAction(conn, g, o)),
  );
  command(
    limits,
    "set",
    'set a model\'s limit (0 pauses it; "default" returns it to the default) and its rates',
  )
    .argument("<model>", "model name, as in the request bodies")
    .argument(
      "[limit]",
      'requests in flight at most, or "default" (omitted: unchanged)',
      limitValue,
    )
    .option("--rpm <n>", 'requests per minute, held fleet-wide; "none" removes it', rateValue)
    .option("--tpm <n>", 'tokens per minute (docs/pacing.md); "none" removes it', rateValue)
    .action(
      run(
        async (
          conn,
          g,
          model: string,
          limit: number | "default" | undefined,
          o: { rpm?: number | "none"; tpm?: number | "none" },
        ) => limitsSetAction(conn, g, model, { limit, rpm: o.rpm, tpm: o.tpm }),
      ),
    );

  registerTenantCommands(program);
  registerRouteCommands(program);
}
