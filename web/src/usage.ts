/**
 * How a model's work in flight reads on every page: what is running against
 * the limit, and the claims buffered at dispatchers as queued.
 *
 * ListModelLimits gives a model's claims (`in_flight`: running, or buffered at
 * a dispatcher waiting for a slot) and the slots granted (at most the limit).
 * A dispatcher runs a claim only on a slot it holds, so at most
 * min(claims, slots) run; the rest wait. Showing claims against the limit read
 * as "15 / 10" while the upstream saw 10.
 */
import type { ModelLimit } from "../../src/gen/fusillade/v1/resources_pb.js";
import { h } from "./dom.js";

export interface Usage {
  /** Requests holding a slot: sent, or about to be. */
  running: number;
  /** Claims beyond the slots: buffered at a dispatcher for its next free slot. */
  queued: number;
  limit: number;
}

/** A model's usage from its ListModelLimits row. */
export function usageOf(l: ModelLimit): Usage {
  const running = Math.min(l.inFlight, l.slotsGranted);
  return { running, queued: l.inFlight - running, limit: l.limit };
}

/** "▮▮▯ 6 / 10 running · 9 queued": the meter is running against the limit. */
export function usageCell(u: Usage): HTMLElement {
  return h(
    "span",
    { class: "usage", "data-running": u.running, "data-queued": u.queued },
    h("meter", { min: 0, max: Math.max(1, u.limit), value: u.running }),
    ` ${u.running} / ${u.limit} running`,
    u.queued > 0 ? h("span", { class: "queued" }, ` · ${u.queued} queued`) : null,
  );
}
