/**
 * How work in flight reads on every page, as the CLI says it: what is
 * **running** against a model's limit, and what is **queued** (pending, or
 * buffered at a dispatcher for a free slot).
 *
 * A model's claims (`in_flight`) are its requests held by dispatchers: running,
 * or buffered for a slot, so they may exceed the limit; the API's `running`
 * (`ModelLimit.running`, `ModelShare.model_running`) counts the claims that
 * hold a granted slot, which the limit bounds. Showing claims against the
 * limit read as "15 / 10" while the upstream saw 10.
 */
import type {
  ModelLimit,
  ModelShare,
  RequestCounts,
} from "../../src/gen/fusillade/v1/resources_pb.js";
import { h } from "./dom.js";

const n = (x: bigint | undefined) => Number(x ?? 0n);

export interface Usage {
  /** Requests holding a slot: sent, or about to be. */
  running: number;
  limit: number;
  /** Waiting to run: pending, and claims buffered at a dispatcher (unset: not known here). */
  queued?: number;
}

/** A model's usage, from its ListModelLimits row. */
export function usageOf(l: ModelLimit): Usage {
  return { running: l.running, limit: l.limit, queued: Number(l.queued) };
}

/** A model's usage as a running batch's share says it (no queued: the share has none). */
export function shareUsage(s: ModelShare): Usage {
  return { running: s.modelRunning, limit: s.limit };
}

/** "▮▮▯ 6 / 10 running · 9 queued": the meter is running against the limit. */
export function usageCell(u: Usage): HTMLElement {
  return h(
    "span",
    { class: "usage", "data-running": u.running, "data-queued": u.queued },
    h("meter", { min: 0, max: Math.max(1, u.limit), value: u.running }),
    ` ${u.running} / ${u.limit} running`,
    u.queued ? h("span", { class: "queued" }, ` · ${u.queued} queued`) : null,
  );
}

/**
 * A batch's (or one model's of it) requests running and queued, from its
 * counts and its shares' `running`: its claims holding a slot run, the rest
 * of its claims and its pending requests are queued. Without shares (a list,
 * or a finished batch), its claims count as running, as the CLI's runView.
 */
export function runOf(
  c: RequestCounts | undefined,
  shares: ModelShare[] | undefined,
): { running: number; queued: number } {
  const claims = n(c?.inProgress);
  const running =
    shares === undefined || shares.length === 0
      ? claims
      : Math.min(
          claims,
          shares.reduce((sum, s) => sum + s.running, 0),
        );
  return { running, queued: n(c?.pending) + claims - running };
}
