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
  /** Requests a minute it could send; 0 or unset while it wants slots: as many as it is given. */
  rateWant?: number;
  /** Tokens a minute it could use; 0 or unset while it wants slots: as many as it is given. */
  tokenWant?: bigint;
  /** The rate shares it spends now (its last answer's); it keeps to them until this call's answer. */
  rpmHeld?: number | undefined;
  tpmHeld?: number | undefined;
  /** How it paces the model now (docs/pacing.md); undefined before its first attempt. */
  pacing?: PacingView | undefined;
}

/** How a model is paced: one dispatcher's view, or the fleet's sum (`dispatchers` of them). */
export interface PacingView {
  /** The slowest reason, one of {@link PACING_MODES}. */
  mode: PacingMode;
  /** Attempts that may run at once now. */
  concurrency: number;
  callsLastMinute: number;
  throttledLastMinute: number;
  /** The span those counts cover, in seconds (60, or less while the model is new). */
  windowSeconds: number;
  /** Attempts in flight now. */
  running: number;
}

/** Pacing modes, slowest first (a fleet shows the slowest of its dispatchers'). */
export const PACING_MODES = ["held", "backing_off", "paced", "free"] as const;
export type PacingMode = (typeof PACING_MODES)[number];

/** A grant as the control plane answers it. */
export interface SlotGrant {
  model: string;
  token: bigint;
  slots: number;
  /** The holder's fair share now. */
  target: number;
  ttlMs: number;
  /** Its share of the model's requests per minute; undefined: the model has no rate. */
  rpm?: number | undefined;
  /** Its share of the model's tokens per minute; undefined: no token rate. */
  tpm?: number | undefined;
}

/** A model on a 429 hold, and how long it has left. */
export interface ModelHold {
  model: string;
  remainingMs: number;
}
