/**
 * What the client command registrations share: the action wrapper (connect,
 * run, close, turn RPC errors into one-line messages), usage-error exits,
 * and the flag parsers.
 */
import { readFileSync } from "node:fs";
import { type Command, CommanderError, InvalidArgumentError } from "commander";
import { parseDuration } from "../domain/duration.js";
import type { Globals } from "./client/actions.js";
import { CliError, type Connection, connect, explainRpcError } from "./client/connection.js";

/** Plain-mode progress lines (not a terminal): at most one per this. */
export const DEFAULT_PLAIN_INTERVAL = "5s";

/** Usage errors exit 2 (help and --version still exit 0). */
export function usageExit(err: CommanderError): never {
  throw err.exitCode === 0 ? err : new CommanderError(2, err.code, err.message);
}

/** --metadata key=value, repeatable: the pairs so far plus this one. */
export function collectMetadata(
  value: string,
  previous: Record<string, string>,
): Record<string, string> {
  const m = /^([^=]+)=(.*)$/s.exec(value);
  if (!m) throw new InvalidArgumentError("must look like key=value");
  return { ...previous, [m[1]!]: m[2]! };
}

/** A repeatable option: the values so far plus this one. */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** An integer of at least 1. */
export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new InvalidArgumentError("must be a positive integer");
  return n;
}

/** A model limit: a non-negative integer, or "default". */
export function limitValue(value: string): number | "default" {
  if (value === "default") return value;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0 || n > 2 ** 31 - 1) {
    throw new InvalidArgumentError(
      'must be a non-negative integer (0 pauses the model), or "default"',
    );
  }
  return n;
}

/** --rpm / --tpm: a rate per minute (1..1,000,000,000), or "none" to remove it. */
export function rateValue(value: string): number | "none" {
  if (value === "none") return value;
  const n = Number(value);
  if (value.trim() === "" || !Number.isSafeInteger(n) || n < 1 || n > 1_000_000_000) {
    throw new InvalidArgumentError('must be an integer from 1 to 1000000000 per minute, or "none"');
  }
  return n;
}

/** --priority: an integer from -100 to 100 (the server's bounds; docs/fair-share.md). */
export function priorityValue(value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isSafeInteger(n) || n < -100 || n > 100)
    throw new InvalidArgumentError("must be an integer from -100 to 100 (default 0)");
  return n;
}

/** A tenant weight: an integer from 1 to 1000, or "default" (weight 1). */
export function weightValue(value: string): number | "default" {
  if (value === "default") return value;
  const n = Number(value);
  if (value.trim() === "" || !Number.isSafeInteger(n) || n < 1 || n > 1000) {
    throw new InvalidArgumentError('must be an integer from 1 to 1000, or "default" (weight 1)');
  }
  return n;
}

/** --max-retries: 0 to 100 (the server's bounds). */
export function retriesValue(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0 || n > 100)
    throw new InvalidArgumentError("must be an integer from 0 to 100");
  return n;
}

/** A backoff: a duration, 0 allowed ("0s": retry at once). */
export function backoffValue(value: string): number {
  const ms = parseDuration(value);
  if (ms === undefined) throw new InvalidArgumentError("must be a duration such as 500ms or 2s");
  return ms;
}

/** A positive duration such as 5s or 1m, in ms. */
export function duration(value: string): number {
  const ms = parseDuration(value);
  if (ms === undefined || ms <= 0)
    throw new InvalidArgumentError("must be a duration such as 5s or 1m");
  return ms;
}

/**
 * Wraps an action: connects with the global flags, closes the connection
 * after, and turns RPC errors into one-line messages.
 */
export function run<A extends unknown[]>(
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
      failure = await explainRpcError(e, conn);
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
export function command(parent: Command, name: string, description: string): Command {
  return parent.command(name).description(description).exitOverride(usageExit);
}
