/**
 * The dispatcher's side of DispatchService: a Connect client (over HTTP/2, or
 * over serve's in-process port: ./port-transport.ts) and the converters
 * between its messages and the dispatcher's own types. Proto
 * types stop here; so do ConnectErrors (mapped to {@link ControlPlaneError}).
 */
import type { ModelHold, SlotDemand, SlotGrant } from "../domain/capacity.js";

export type { ModelHold, SlotDemand, SlotGrant };

import { create } from "@bufbuild/protobuf";
import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { AttemptOutcome } from "../domain/outcome.js";
import {
  ClaimLossReason,
  DispatchService,
  OutcomeSchema,
  type Claim as ProtoClaim,
  type ModelHold as ProtoModelHold,
  type Outcome as ProtoOutcome,
  ReportResult_Disposition,
} from "../gen/fusillade/v1/dispatch_service_pb.js";
import type { OutboundRequest } from "../http/executor.js";

/** Names one claim: the request and the fencing token. */
export interface LeaseRef {
  requestId: string;
  token: bigint;
}

/** A claimed request, as the dispatcher runs it. */
export interface DispatchLease {
  ref: LeaseRef;
  batchId: string;
  customId: string;
  model: string;
  /** 1 for the first attempt. */
  attempt: number;
  request: OutboundRequest;
  /** Time left on the claim when the control plane granted it. */
  ttlMs: number;
}

/** Why the control plane says a claim is gone. */
export type LossReason = "expired" | "batch_cancelled" | "batch_expired" | "not_current";

/** What the dispatcher reports for one claim: the attempt's outcome, or a release. */
export type Report =
  | { ref: LeaseRef; kind: "outcome"; outcome: AttemptOutcome }
  | { ref: LeaseRef; kind: "release"; reason: string; unsent: boolean };

/** What the control plane did with a report. */
export type Disposition = "recorded" | "requeued" | "lost";

export interface SyncAnswer {
  grants: SlotGrant[];
  lostGrants: Array<{ model: string; token: bigint }>;
  claims: DispatchLease[];
  renewed: Array<{ ref: LeaseRef; ttlMs: number }>;
  lost: Array<{ ref: LeaseRef; reason: LossReason }>;
  holds: ModelHold[];
}

/** What a dispatcher could take, for WaitForWork. */
export interface WorkInterest {
  models: readonly string[];
  hungry: string[];
  grow: string[];
  known: string[];
  newModels: boolean;
  /** Models it wants more slots of than its share gave it (woken only by a change). */
  more: string[];
}

export interface ReportAnswer {
  dispositions: Map<string, Disposition>;
  claims: DispatchLease[];
  holds: ModelHold[];
}

/** The RPCs the dispatcher needs; an interface so that tests can stand in for the server. */
export interface LeaseClient {
  /** Grants and claims: renew, hand back, grow, claim. Short. */
  sync(slots: SlotDemand[], renew: LeaseRef[], timeoutMs: number): Promise<SyncAnswer>;
  /** Long poll: the models with work for us, or [] after `waitMs`. */
  waitForWork(interest: WorkInterest, waitMs: number, signal: AbortSignal): Promise<string[]>;
  /** Reports outcomes (dispositions by {@link refKey}) and asks for claims for `refill`. */
  report(
    reports: Report[],
    refill: Array<{ model: string; room: number }>,
    timeoutMs: number,
  ): Promise<ReportAnswer>;
  /** Drops the connection. */
  close(): void;
}

/**
 * A call to the control plane failed. `retriable`: the control plane may take
 * it later (unreachable, overloaded, deadline); otherwise it rejected the call.
 */
export class ControlPlaneError extends Error {
  constructor(
    message: string,
    readonly retriable: boolean,
    options?: ErrorOptions,
    /** The call's status code; undefined when it never reached the control plane's handler. */
    readonly code?: Code,
  ) {
    super(message, options);
    this.name = "ControlPlaneError";
  }

  /**
   * True when the control plane (or something on the way) answered the call
   * with an error that says nothing of reachability: the same call is likely
   * to fail the same way (RESOURCE_EXHAUSTED for a message too large,
   * INVALID_ARGUMENT, INTERNAL from a statement that cannot succeed).
   */
  get rejected(): boolean {
    return this.code !== undefined && !TRANSIENT_CODES.has(this.code);
  }
}

/** Codes that say the control plane could not be reached or did not answer in time. */
const TRANSIENT_CODES = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Canceled,
  Code.Aborted,
  Code.Unauthenticated,
  Code.PermissionDenied,
]);

/** Codes after which the same call may succeed later. */
const RETRIABLE_CODES = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.ResourceExhausted,
  Code.Aborted,
  Code.Internal,
  Code.Unknown,
  Code.Canceled,
  // An operator can fix credentials or a proxy without restarting us.
  Code.Unauthenticated,
  Code.PermissionDenied,
]);

/** Map key of a lease ref. */
export function refKey(ref: LeaseRef): string {
  return `${ref.requestId}/${ref.token}`;
}

const LOSS: Record<ClaimLossReason, LossReason> = {
  [ClaimLossReason.UNSPECIFIED]: "not_current",
  [ClaimLossReason.EXPIRED]: "expired",
  [ClaimLossReason.BATCH_CANCELLED]: "batch_cancelled",
  [ClaimLossReason.BATCH_EXPIRED]: "batch_expired",
  [ClaimLossReason.NOT_CURRENT]: "not_current",
};

const DISPOSITION: Record<ReportResult_Disposition, Disposition> = {
  [ReportResult_Disposition.UNSPECIFIED]: "lost",
  [ReportResult_Disposition.RECORDED]: "recorded",
  [ReportResult_Disposition.REQUEUED]: "requeued",
  [ReportResult_Disposition.LOST]: "lost",
};

/** A proto claim as a {@link DispatchLease}. */
export function fromProtoClaim(l: ProtoClaim): DispatchLease {
  if (!l.ref) throw new ControlPlaneError("a claim has no ref", false);
  return {
    ref: { requestId: l.ref.requestId, token: l.ref.token },
    batchId: l.batchId,
    customId: l.customId,
    model: l.model,
    attempt: l.attempt,
    request: {
      method: l.method,
      url: l.url,
      headers: l.headers.map((h) => [h.name, h.value]),
      body: l.body,
    },
    ttlMs: l.ttl ? durationMs(l.ttl) : 0,
  };
}

/** A {@link Report} as a proto Outcome. */
export function toProtoOutcome(r: Report): ProtoOutcome {
  const ref = { requestId: r.ref.requestId, token: r.ref.token };
  if (r.kind === "release") {
    return create(OutcomeSchema, {
      ref,
      result: { case: "release", value: { reason: r.reason, unsent: r.unsent } },
    });
  }
  const o = r.outcome;
  if (o.kind === "completion") {
    // The common case as a literal message: create() walks the schema for
    // every field, and a report carries hundreds of completions.
    return {
      $typeName: "fusillade.v1.Outcome",
      ref: { $typeName: "fusillade.v1.ClaimRef", ...ref },
      result: {
        case: "completion",
        value: {
          $typeName: "fusillade.v1.Completion",
          statusCode: o.statusCode,
          headers: o.headers,
          body: o.body,
        },
      },
    };
  }
  return create(OutcomeSchema, {
    ref,
    result: {
      case: "failure",
      value: {
        statusCode: o.statusCode,
        code: o.code,
        message: o.message,
        retriable: o.retriable,
        retryAfter: o.retryAfterMs === undefined ? undefined : durationFromMs(o.retryAfterMs),
        bodyExcerpt: o.bodyExcerpt,
        headers: o.headers,
      },
    },
  });
}

/** Bytes a report carries (bodies dominate); for sizing report batches. */
export function reportBytes(r: Report): number {
  if (r.kind === "release") return 64;
  const o = r.outcome;
  return 256 + (o.kind === "completion" ? o.body.byteLength : o.bodyExcerpt.byteLength);
}

/** A failed call `what` as a {@link ControlPlaneError}: retriable or not, and the code when the control plane answered. */
export function controlPlaneError(e: unknown, what: string): ControlPlaneError {
  const err = ConnectError.from(e);
  // An error the client made from a socket or stream failure carries that
  // failure as its cause; one the server sent does not.
  const answered = err.cause === undefined;
  return new ControlPlaneError(
    `${what}: ${Code[err.code] ?? err.code}: ${err.rawMessage}`,
    RETRIABLE_CODES.has(err.code),
    { cause: e },
    answered ? err.code : undefined,
  );
}

/** Sends `authorization: Bearer <token>` on every call. */
export function bearer(token: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** Connect over HTTP/2 (h2c for http://) to the control plane at `baseUrl`. */
export function connectLeaseClient(
  baseUrl: string,
  dispatcherId: string,
  token?: string,
  tls: { ca?: string } = {},
): LeaseClient {
  // Pings notice a dead control plane (kill -9, a lost network) within ~15 s
  // even while the only call is a quiet long poll.
  const sessions = new Http2SessionManager(
    baseUrl,
    { pingIntervalMs: 10_000, pingTimeoutMs: 5_000 },
    tls.ca === undefined ? {} : { ca: tls.ca },
  );
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: "2",
    sessionManager: sessions,
    useBinaryFormat: true,
    // No compression: claims and reports are mostly request and response
    // bodies, and gzip on both ends cost more CPU than the bytes saved on
    // loopback or a cluster network.
    acceptCompression: [],
    sendCompression: undefined,
    interceptors: token === undefined ? [] : [bearer(token)],
  });
  return leaseClient(transport, dispatcherId, () => sessions.abort());
}

/**
 * The {@link LeaseClient} of dispatcher `dispatcherId` over a Connect `transport`
 * (HTTP/2, or serve's in-process port: ./port-transport.ts); `close` drops the transport.
 */
export function leaseClient(
  transport: Transport,
  dispatcherId: string,
  close: () => void,
): LeaseClient {
  const client = createClient(DispatchService, transport);
  return {
    async sync(slots, renew, timeoutMs) {
      try {
        const res = await client.sync({ dispatcherId, slots, claims: renew }, { timeoutMs });
        return {
          grants: res.grants.map((g) => ({
            model: g.model,
            token: g.token,
            slots: g.slots,
            target: g.target,
            ttlMs: g.ttl ? durationMs(g.ttl) : 0,
            rpm: g.rpm,
            tpm: g.tpm,
          })),
          lostGrants: res.lostGrants.map((g) => ({ model: g.model, token: g.token })),
          claims: res.claims.map(fromProtoClaim),
          renewed: res.renewed.flatMap((r) =>
            r.ref ? [{ ref: fromRef(r.ref), ttlMs: r.ttl ? durationMs(r.ttl) : 0 }] : [],
          ),
          lost: res.lost.flatMap((r) =>
            r.ref ? [{ ref: fromRef(r.ref), reason: LOSS[r.reason] ?? "not_current" }] : [],
          ),
          holds: fromProtoHolds(res.holds),
        };
      } catch (e) {
        throw e instanceof ControlPlaneError ? e : controlPlaneError(e, "Sync");
      }
    },
    async waitForWork(interest, waitMs, signal) {
      try {
        const res = await client.waitForWork(
          { dispatcherId, ...interest, models: [...interest.models], wait: durationFromMs(waitMs) },
          // The server answers by waitMs; past that plus a margin it is not coming.
          { signal, timeoutMs: waitMs + 15_000 },
        );
        return res.models;
      } catch (e) {
        throw controlPlaneError(e, "WaitForWork");
      }
    },
    async report(reports, refill, timeoutMs) {
      try {
        const res = await client.reportResults(
          { dispatcherId, outcomes: reports.map(toProtoOutcome), refill },
          { timeoutMs },
        );
        const dispositions = new Map<string, Disposition>();
        for (const r of res.results) {
          if (r.ref) dispositions.set(refKey(r.ref), DISPOSITION[r.disposition] ?? "lost");
        }
        return {
          dispositions,
          claims: res.claims.map(fromProtoClaim),
          holds: fromProtoHolds(res.holds),
        };
      } catch (e) {
        throw e instanceof ControlPlaneError ? e : controlPlaneError(e, "ReportResults");
      }
    },
    close,
  };
}

function fromRef(r: { requestId: string; token: bigint }): LeaseRef {
  return { requestId: r.requestId, token: r.token };
}

function fromProtoHolds(holds: ProtoModelHold[]): ModelHold[] {
  return holds.map((h) => ({
    model: h.model,
    remainingMs: h.remaining ? durationMs(h.remaining) : 0,
  }));
}
