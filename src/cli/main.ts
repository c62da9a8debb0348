/**
 * The `fusillade` command line: servers and the client commands.
 *
 * src/cli/ holds the entry points: parse flags, build, listen. The top layer:
 * it may import anything below it (the control plane, the dispatcher,
 * storage, the client library).
 */
import { Command, CommanderError } from "commander";
import { registerClientCommands } from "./client-commands.js";
import { registerServerCommands } from "./server-commands.js";

const program = new Command("fusillade")
  .description(
    "Run large batches of HTTP requests reliably: retries, fleet-wide per-model concurrency limits, state in Postgres.",
  )
  .version("0.1.0")
  .showHelpAfterError()
  .exitOverride();

registerServerCommands(program);
try {
  registerClientCommands(program);
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  console.error(`fusillade: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
}
