/**
 * `fusillade routes set|list|delete` (admin): where each model's requests go
 * when a file names no endpoint (docs/openai-api.md). This file parses
 * flags; src/cli/client/routes.ts does the work.
 */
import type { Command } from "commander";
import { command, run } from "./cli-kit.js";
import { routesDeleteAction, routesListAction, routesSetAction } from "./client/routes.js";

const TENANT_HELP =
  "a tenant's own route (default: the operator's, used by every tenant without its own)";

/** Registers `routes` and its subcommands on `program`. */
export function registerRouteCommands(program: Command): void {
  const routes = command(
    program,
    "routes",
    "model routes: where each model's requests go when a file names no endpoint (admin)",
  );
  command(routes, "set", "set (or replace) a model's route")
    .argument("<model>", "the model name in request bodies, or '*' for every model without one")
    .requiredOption("--endpoint <url>", "base URL each line's url is appended to")
    .option("--api-key-file <file>", "a file whose first line is the upstream API key")
    .option("--tenant <tenant>", TENANT_HELP)
    .action(
      run(
        async (
          conn,
          g,
          model: string,
          o: { endpoint: string; apiKeyFile?: string; tenant?: string },
        ) => routesSetAction(conn, g.json, model, o),
      ),
    );
  command(routes, "list", "list routes (never their keys)")
    .option("--tenant <tenant>", "only this tenant's routes")
    .action(
      run(async (conn, g, o: { tenant?: string }) => routesListAction(conn, g.json, o.tenant)),
    );
  command(routes, "delete", "delete a model's route and its stored key")
    .argument("<model>", "the model name, or '*'")
    .option("--tenant <tenant>", TENANT_HELP)
    .action(
      run(async (conn, g, model: string, o: { tenant?: string }) =>
        routesDeleteAction(conn, g.json, model, o.tenant),
      ),
    );
}
