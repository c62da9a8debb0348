/**
 * What every part of a dispatcher shares (./dispatcher.ts wires them): the
 * book of models, the table of claims, where counters go, and the log. Each
 * part keeps its own state in itself; these two are parts too, passed by
 * reference so that the others can read and act on them.
 */
import type { Logger } from "../logger.js";
import type { DispatcherMetrics } from "../metrics/dispatcher-metrics.js";
import type { LeaseTable } from "./lease-table.js";
import type { SlotBook } from "./model-slots.js";

export interface Shared {
  readonly book: SlotBook;
  readonly table: LeaseTable;
  readonly metrics: DispatcherMetrics;
  readonly log: Logger;
}
