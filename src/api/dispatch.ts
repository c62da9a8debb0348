/** DispatchService: slots and claims for dispatchers (thin: converts and calls LeaseService). */
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  PACING_MODES,
  type PacingMode,
  type PacingView,
  type SlotDemand,
} from "../domain/capacity.js";
import { InvalidArgumentError } from "../domain/errors.js";
import type { FailureCode } from "../domain/outcome.js";
import {
  type Claim,
  ClaimLossReason,
  type DispatchService,
  ModelHoldSchema,
  type ClaimRef as ProtoClaimRef,
  type ModelHold as ProtoModelHold,
  ReportResult_Disposition,
  type ReportResultsRequest,
  ReportResultsResponseSchema,
  type SyncRequest,
  SyncResponseSchema,
  WaitForWorkResponseSchema,
} from "../gen/fusillade/v1/dispatch_service_pb.js";
import type { ModelPacing } from "../gen/fusillade/v1/resources_pb.js";
import type {
  Disposition,
  GrantedClaim,
  LeaseRef,
  LeaseService,
  LossReason,
  ModelHold,
  Outcome,
} from "../leases/lease-service.js";
import { fromDuration, toDuration } from "./convert.js";
import type { ApiDeps } from "./deps.js";

const LOSS_TO_PROTO: Record<LossReason, ClaimLossReason> = {
  expired: ClaimLossReason.EXPIRED,
  batch_cancelled: ClaimLossReason.BATCH_CANCELLED,
  batch_expired: ClaimLossReason.BATCH_EXPIRED,
  not_current: ClaimLossReason.NOT_CURRENT,
};

const DISPOSITION_TO_PROTO: Record<Disposition, ReportResult_Disposition> = {
  recorded: ReportResult_Disposition.RECORDED,
  requeued: ReportResult_Disposition.REQUEUED,
  lost: ReportResult_Disposition.LOST,
};

const FAILURE_CODES = new Set<FailureCode>([
  "http_error",
  "timeout",
  "network_error",
  "response_too_large",
  "aborted",
  "report_rejected",
]);

/** Longest body excerpt stored for a failure. */
const MAX_EXCERPT_BYTES = 64 * 1024;

function fromRef(r: ProtoClaimRef | undefined, field: string): LeaseRef {
  if (!r || r.requestId === "") throw new InvalidArgumentError(field, "is required");
  return { requestId: r.requestId, token: r.token };
}

const encoder = new TextEncoder();

/**
 * A Claim as a literal message, not through `create()`: create() walks the
 * schema for every field (~4–8 µs a claim, measured), and a Sync answers
 * hundreds of claims. The type keeps every field named.
 */
function toProtoClaim(c: GrantedClaim): Claim {
  return {
    $typeName: "fusillade.v1.Claim",
    ref: { $typeName: "fusillade.v1.ClaimRef", requestId: c.requestId, token: c.token },
    batchId: c.batchId,
    customId: c.customId ?? "",
    model: c.model,
    attempt: c.attempt,
    method: c.method,
    url: c.url,
    headers: c.headers.map(([name, value]) => ({ $typeName: "fusillade.v1.Header", name, value })),
    body: encoder.encode(c.body),
    ttl: toDuration(c.ttlMs),
  };
}

function toProtoHolds(holds: ModelHold[]): ProtoModelHold[] {
  return holds.map((h) =>
    create(ModelHoldSchema, { model: h.model, remaining: toDuration(h.remainingMs) }),
  );
}

/** Throws unless `n` is a non-negative count; names `field`. */
function count<N extends number | bigint>(n: N, field: string): N {
  if (n < 0) throw new InvalidArgumentError(field, "must not be negative");
  return n;
}

/** A dispatcher's pacing view from the wire; a mode we do not know is INVALID_ARGUMENT. */
function pacingView(p: ModelPacing, field: string): PacingView {
  if (!(PACING_MODES as readonly string[]).includes(p.mode)) {
    throw new InvalidArgumentError(`${field}.mode`, `must be one of ${PACING_MODES.join(", ")}`);
  }
  return {
    mode: p.mode as PacingMode,
    concurrency: count(p.concurrency, `${field}.concurrency`),
    callsLastMinute: count(p.callsLastMinute, `${field}.calls_last_minute`),
    throttledLastMinute: count(p.throttledLastMinute, `${field}.throttled_last_minute`),
    windowSeconds: count(p.windowSeconds, `${field}.window_seconds`),
    running: count(p.running, `${field}.running`),
  };
}

/** One model's demand of a Sync, checked (INVALID_ARGUMENT naming the field). */
function fromProtoDemand(d: SyncRequest["slots"][number], i: number): SlotDemand {
  if (d.model === "") throw new InvalidArgumentError(`slots[${i}].model`, "is required");
  return {
    model: d.model,
    token: d.token,
    keep: count(d.keep, `slots[${i}].keep`),
    want: count(d.want, `slots[${i}].want`),
    room: count(d.room, `slots[${i}].room`),
    rateWant: count(d.rateWant, `slots[${i}].rate_want`),
    tokenWant: count(d.tokenWant, `slots[${i}].token_want`),
    rpmHeld: d.rpmHeld === undefined ? undefined : count(d.rpmHeld, `slots[${i}].rpm_held`),
    tpmHeld: d.tpmHeld === undefined ? undefined : count(d.tpmHeld, `slots[${i}].tpm_held`),
    pacing: d.pacing && pacingView(d.pacing, `slots[${i}].pacing`),
  };
}

/** A Sync's answer on the wire. */
function toProtoSync(res: Awaited<ReturnType<LeaseService["sync"]>>) {
  return create(SyncResponseSchema, {
    grants: res.grants.map((g) => ({
      model: g.model,
      token: g.token,
      slots: g.slots,
      target: g.target,
      ttl: toDuration(g.ttlMs),
      rpm: g.rpm,
      tpm: g.tpm,
    })),
    lostGrants: res.lostGrants,
    claims: res.claims.map(toProtoClaim),
    renewed: res.renewed.map((r) => ({
      ref: { requestId: r.requestId, token: r.token },
      ttl: toDuration(r.ttlMs),
    })),
    lost: res.lost.map((r) => ({
      ref: { requestId: r.requestId, token: r.token },
      reason: LOSS_TO_PROTO[r.reason],
    })),
    holds: toProtoHolds(res.holds),
    serverTime: timestampNow(),
  });
}

/** One outcome of a ReportResults call, checked (INVALID_ARGUMENT naming the field). */
function fromProtoOutcome(o: ReportResultsRequest["outcomes"][number], i: number): Outcome {
  const ref = fromRef(o.ref, `outcomes[${i}].ref`);
  switch (o.result.case) {
    case "completion":
      return {
        ref,
        kind: "completion",
        statusCode: o.result.value.statusCode,
        headers: o.result.value.headers,
        body: o.result.value.body,
      };
    case "failure": {
      const f = o.result.value;
      const code = f.code as FailureCode;
      if (!FAILURE_CODES.has(code)) {
        throw new InvalidArgumentError(
          `outcomes[${i}].failure.code`,
          `unknown code ${JSON.stringify(f.code)}`,
        );
      }
      return {
        ref,
        kind: "failure",
        statusCode: f.statusCode,
        code,
        message: f.message,
        retriable: f.retriable,
        retryAfterMs: fromDuration(f.retryAfter),
        bodyExcerpt: f.bodyExcerpt.subarray(0, MAX_EXCERPT_BYTES),
        headers: f.headers,
      };
    }
    case "release":
      return { ref, kind: "release", reason: o.result.value.reason, unsent: o.result.value.unsent };
    default:
      throw new InvalidArgumentError(`outcomes[${i}].result`, "is required");
  }
}

/** The DispatchService methods. */
export function dispatchMethods(
  deps: ApiDeps,
  leases: LeaseService,
): ServiceImpl<typeof DispatchService> {
  return {
    async sync(req, ctx) {
      if (req.dispatcherId === "") throw new InvalidArgumentError("dispatcher_id", "is required");
      deps.fleet?.seen(req.dispatcherId);
      const demands = req.slots.map(fromProtoDemand);
      const renew = req.claims.map((r, i) => fromRef(r, `claims[${i}]`));
      const res = await leases.sync(req.dispatcherId, demands, renew);
      if (ctx.signal.aborted && res.claims.length > 0) {
        // The caller went away (or the server is stopping) while we claimed:
        // give the claims back now rather than let them wait for the reaper,
        // and answer none (connect still writes an answer on shutdown, and a
        // claim in it would no longer be current).
        await leases.report(res.claims.map(unsentRelease));
        res.claims = [];
      }
      return toProtoSync(res);
    },

    async waitForWork(req, ctx) {
      if (req.dispatcherId === "") throw new InvalidArgumentError("dispatcher_id", "is required");
      deps.fleet?.seen(req.dispatcherId);
      const signal = linkedSignal(ctx.signal, deps.shutdownSignal);
      try {
        const models = await leases.waitForWork(
          {
            models: req.models,
            hungry: req.hungry,
            grow: req.grow,
            more: req.more,
            known: req.known,
            newModels: req.newModels,
          },
          fromDuration(req.wait) ?? 0,
          signal.signal,
        );
        return create(WaitForWorkResponseSchema, { models });
      } finally {
        signal.dispose();
      }
    },

    async reportResults(req, ctx) {
      const outcomes = req.outcomes.map(fromProtoOutcome);
      const rooms = new Map<string, number>();
      req.refill.forEach((r, i) => {
        if (r.model === "") throw new InvalidArgumentError(`refill[${i}].model`, "is required");
        rooms.set(r.model, count(r.room, `refill[${i}].room`));
      });
      const { dispositions, claims, holds } = await leases.reportAndClaim(
        outcomes,
        req.dispatcherId,
        rooms,
      );
      if (ctx.signal.aborted && claims.length > 0) {
        // The caller went away: nobody may receive these claims.
        await leases.report(claims.map(unsentRelease));
        claims.length = 0;
      }
      return create(ReportResultsResponseSchema, {
        results: outcomes.map((o) => ({
          ref: { requestId: o.ref.requestId, token: o.ref.token },
          disposition:
            DISPOSITION_TO_PROTO[dispositions.get(`${o.ref.requestId}/${o.ref.token}`) ?? "lost"],
        })),
        claims: claims.map(toProtoClaim),
        holds: toProtoHolds(holds),
      });
    },
  };
}

/** A release of a claim that was never sent (its attempt is given back). */
function unsentRelease(c: GrantedClaim): Outcome {
  return {
    ref: { requestId: c.requestId, token: c.token },
    kind: "release",
    reason: "the call ended while requests were claimed",
    unsent: true,
  };
}

/**
 * A signal that aborts when either does (the caller left, or the server is
 * stopping); `dispose()` removes its listeners, so a long-lived signal does
 * not collect one per call.
 */
function linkedSignal(a: AbortSignal, b: AbortSignal): { signal: AbortSignal; dispose(): void } {
  const c = new AbortController();
  const onAbort = () => c.abort();
  const dispose = () => {
    a.removeEventListener("abort", onAbort);
    b.removeEventListener("abort", onAbort);
  };
  if (a.aborted || b.aborted) c.abort();
  else {
    a.addEventListener("abort", onAbort, { once: true });
    b.addEventListener("abort", onAbort, { once: true });
  }
  return { signal: c.signal, dispose };
}
