/** Client commands (submit, watch, results, …): registered on the program. */
import type { Command } from "commander";

/** Registers the client commands on `program`. */
export function registerClientCommands(_program: Command): void {}
