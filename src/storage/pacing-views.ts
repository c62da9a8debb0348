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
  window: number | null;
  running: number | null;
}

/** SQL: the pacing row of the model named by the SQL expression `model`. */
export function pacingOf(model: string): string {
  return `(SELECT CASE WHEN count(*) > 0 THEN jsonb_build_object(
        'modes', jsonb_agg(s.pacing->>'mode'),
        'concurrency', sum((s.pacing->>'concurrency')::int),
        'calls', sum((s.pacing->>'callsLastMinute')::int),
        'throttled', sum((s.pacing->>'throttledLastMinute')::int),
        'window', max((s.pacing->>'windowSeconds')::int),
        'running', sum((s.pacing->>'running')::int),
        'dispatchers', count(*)) END
      FROM slot_grants s
      WHERE s.model = ${model} AND s.expires_at > now() AND s.pacing IS NOT NULL)`;
}

/** A pacing row as the fleet's view; the slowest mode of any dispatcher. */
function fleetPacing(r: PacingRow | null): FleetPacing | null {
  return (
    r && {
      mode: PACING_MODES.find((m) => r.modes.includes(m)) ?? "free",
      concurrency: r.concurrency,
      callsLastMinute: r.calls,
      throttledLastMinute: r.throttled,
      // Views sent before these fields: a minute, and nothing known of the running.
      windowSeconds: r.window ?? 60,
      running: r.running ?? Number.POSITIVE_INFINITY,
      dispatchers: r.dispatchers,
    }
  );
}

/**
 * A model's pacing, and its requests running now: a dispatcher runs a claim only in a slot
 * and fills its slots from its claims, so the claims beyond the slots granted are buffered
 * (fleet-wide an upper bound: a dispatcher's spare slots do not run another's claims); and
 * of those no more than the pacers let run (their views, up to a few seconds old).
 */
export function runningNow(
  claims: number,
  slotsGranted: number,
  row: PacingRow | null,
): { running: number; pacing: FleetPacing | null } {
  const pacing = fleetPacing(row);
  const slotted = Math.min(claims, slotsGranted);
  return { running: pacing === null ? slotted : Math.min(slotted, pacing.running), pacing };
}
