/**
 * `fusillade tenants set-weight|list` (admin): tenant weights in fair share
 * (docs/fair-share.md). This file parses flags; src/cli/client/tenants.ts
 * does the work.
 */
import type { Command } from "commander";
import { command, run, weightValue } from "./cli-kit.js";
import { tenantsListAction, tenantsSetWeightAction } from "./client/tenants.js";

/** Registers `tenants` and its subcommands on `program`. */
export function registerTenantCommands(program: Command): void {
  const tenants = command(
    program,
    "tenants",
    "tenant weights: how a model's slots are shared between tenants (admin)",
  );
  command(
    tenants,
    "list",
    "list tenants with a weight or unfinished batches, and their use",
  ).action(run(async (conn, g) => tenantsListAction(conn, g.json)));
  command(
    tenants,
    "set-weight",
    "set a tenant's weight: its share of a busy model against the other tenants' (\"default\" returns it to 1)",
  )
    .argument("<tenant>", "tenant name, as in its client tokens")
    .argument("<weight>", 'an integer from 1 to 1000, or "default"', weightValue)
    .action(
      run(async (conn, g, tenant: string, weight: number | "default") =>
        tenantsSetWeightAction(conn, g.json, tenant, weight),
      ),
    );
}
