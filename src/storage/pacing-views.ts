/**
 * How the fleet paces a model, from what each grant's holder last said in its Sync
 * (`slot_grants.pacing`, docs/pacing.md "What is visible where"): summed over the live
 * grants, with the slowest mode of any. Read by ListModelLimits, ListBatchModels and a
 * batch's shares (status, watch, the dashboard).
 */
import { PACING_MODES, type PacingView } from "../domain/capacity.js";

/** The fleet's view: a dispatcher's fields summed, and how many dispatchers said. */
export type FleetPacing = PacingView & { dispatchers: number };

/** The row `pacingOf` answers (null: no live grant has said anything). */
export interface PacingRow {
  modes: string[];
  concurrency: number;
  calls: number;
  throttled: number;
  dispatchers: number;
}

/** SQL: the pacing row of the model named by the SQL expression `model`. */
export function pacingOf(model: string): string {
  return `(SELECT CASE WHEN count(*) > 0 THEN jsonb_build_object(
        'modes', jsonb_agg(s.pacing->>'mode'),
        'concurrency', sum((s.pacing->>'concurrency')::int),
        'calls', sum((s.pacing->>'callsLastMinute')::int),
        'throttled', sum((s.pacing->>'throttledLastMinute')::int),
        'dispatchers', count(*)) END
      FROM slot_grants s
      WHERE s.model = ${model} AND s.expires_at > now() AND s.pacing IS NOT NULL)`;
}

/** A pacing row as the fleet's view; the slowest mode of any dispatcher. */
export function fleetPacing(r: PacingRow | null): FleetPacing | null {
  return (
    r && {
      mode: PACING_MODES.find((m) => r.modes.includes(m)) ?? "free",
      concurrency: r.concurrency,
      callsLastMinute: r.calls,
      throttledLastMinute: r.throttled,
      dispatchers: r.dispatchers,
    }
  );
}
