/**
 * `fusillade limits list|set`: per-model limits and rates, fleet-wide. An
 * admin lists and sets every model's; a client token lists those of the
 * models its batches use. This file parses flags; src/cli/client/limits.ts
 * does the work.
 */
import type { Command } from "commander";
import { command, limitValue, rateValue, run } from "./cli-kit.js";
import { limitsListAction, limitsSetAction } from "./client/limits.js";
import { listOptions } from "./list-commands.js";

/** Registers `limits` and its subcommands on `program`. */
export function registerLimitCommands(program: Command): void {
  const limits = command(
    program,
    "limits",
    "per-model concurrency limits and rates (requests and tokens per minute), fleet-wide",
  );
  listOptions(
    command(
      limits,
      "list",
      "list models, their limits, rates and what runs now (a client token: the models of its unfinished batches)",
    ),
  )
    .option("--batch <id>", "only the models of this batch")
    .action(
      run(async (conn, g, o: { limit: number; pageToken: string; batch?: string }) =>
        limitsListAction(conn, g, o),
      ),
    );
  command(
    limits,
    "set",
    'set a model\'s limit (0 pauses it; "default" returns it to the default) and its rates (admin)',
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
}
