/**
 * `fusillade tokens create|list|revoke` (admin): who may call the API
 * (docs/trust.md). This file parses flags; src/cli/client/tokens.ts does the work.
 */
import type { Command } from "commander";
import { command, run } from "./cli-kit.js";
import { tokensCreateAction, tokensListAction, tokensRevokeAction } from "./client/tokens.js";

/** Registers `tokens` and its subcommands on `program`. */
export function registerTokenCommands(program: Command): void {
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
}
