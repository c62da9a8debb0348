/**
 * The shapes both ends of the capacity-lease protocol speak of
 * (docs/capacity-leases.md): the control plane's lease service and the
 * dispatcher's client convert the wire messages to and from these.
 */

/** One model in a Sync: what a dispatcher holds of it and asks for. */
export interface SlotDemand {
  model: string;
  /** The grant's token; 0n asks for a new grant. */
  token: bigint;
  /** Slots it keeps (the grant is cut to this). */
  keep: number;
  /** Slots it could use. */
  want: number;
  /** Claims it has room for. */
  room: number;
}

/** A grant as the control plane answers it. */
export interface SlotGrant {
  model: string;
  token: bigint;
  slots: number;
  /** The holder's fair share now. */
  target: number;
  ttlMs: number;
}

/** A model on a 429 hold, and how long it has left. */
export interface ModelHold {
  model: string;
  remainingMs: number;
}
