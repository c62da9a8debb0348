/** DispatchService: leases for dispatchers (thin: converts and calls LeaseService). */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { InvalidArgumentError } from "../domain/errors.js";
import type { FailureCode } from "../domain/outcome.js";
import {
  AcquireLeasesResponseSchema,
  type DispatchService,
  LeaseLossReason,
  LeaseSchema,
  type LeaseRef as ProtoLeaseRef,
  RenewLeasesResponseSchema,
  ReportResult_Disposition,
  ReportResultsResponseSchema,
} from "../gen/fusillade/v1/dispatch_service_pb.js";
import type {
  Disposition,
  LeaseRef,
  LeaseService,
  LossReason,
  Outcome,
} from "../leases/lease-service.js";
import { fromDuration, toDuration, toTimestamp } from "./convert.js";
import type { ApiDeps } from "./deps.js";

const LOSS_TO_PROTO: Record<LossReason, LeaseLossReason> = {
  expired: LeaseLossReason.EXPIRED,
  batch_cancelled: LeaseLossReason.BATCH_CANCELLED,
  batch_expired: LeaseLossReason.BATCH_EXPIRED,
  not_current: LeaseLossReason.NOT_CURRENT,
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
]);

/** Longest body excerpt stored for a failure. */
const MAX_EXCERPT_BYTES = 64 * 1024;

const decoder = new TextDecoder();

function fromRef(r: ProtoLeaseRef | undefined, field: string): LeaseRef {
  if (!r || r.requestId === "") throw new InvalidArgumentError(field, "is required");
  return { requestId: r.requestId, token: r.token };
}

/** The DispatchService methods. */
export function dispatchMethods(
  deps: ApiDeps,
  leases: LeaseService,
): ServiceImpl<typeof DispatchService> {
  return {
    async acquireLeases(req, ctx) {
      if (req.dispatcherId === "") throw new InvalidArgumentError("dispatcher_id", "is required");
      if (req.maxLeases < 0) throw new InvalidArgumentError("max_leases", "must not be negative");
      const signal = AbortSignal.any([ctx.signal, deps.shutdownSignal]);
      const granted = await leases.acquire({
        holder: req.dispatcherId,
        max: req.maxLeases,
        models: req.models,
        waitMs: fromDuration(req.wait) ?? 0,
        signal,
      });
      if (signal.aborted && granted.length > 0) {
        // The caller went away (or the server is stopping) while we granted:
        // nobody may receive these. Give them back now rather than let them
        // hold slots until they expire.
        await leases.report(
          granted.map((l) => ({
            ref: { requestId: l.requestId, token: l.token },
            kind: "release" as const,
            reason: "the AcquireLeases call ended while leases were granted",
          })),
        );
        return create(AcquireLeasesResponseSchema, {});
      }
      return create(AcquireLeasesResponseSchema, {
        leases: granted.map((l) =>
          create(LeaseSchema, {
            ref: { requestId: l.requestId, token: l.token },
            batchId: l.batchId,
            customId: l.customId ?? "",
            model: l.model,
            attempt: l.attempt,
            method: l.method,
            url: l.url,
            headers: l.headers.map(([name, value]) => ({ name, value })),
            body: new TextEncoder().encode(l.body),
            expireTime: toTimestamp(l.expiresAt),
            ttl: toDuration(l.ttlMs),
          }),
        ),
      });
    },

    async renewLeases(req) {
      const refs = req.leases.map((r, i) => fromRef(r, `leases[${i}]`));
      const { renewed, lost } = await leases.renew(refs);
      return create(RenewLeasesResponseSchema, {
        renewed: renewed.map((r) => ({
          ref: { requestId: r.requestId, token: r.token },
          expireTime: toTimestamp(r.expiresAt),
          ttl: toDuration(r.ttlMs),
        })),
        lost: lost.map((r) => ({
          ref: { requestId: r.requestId, token: r.token },
          reason: LOSS_TO_PROTO[r.reason],
        })),
      });
    },

    async reportResults(req) {
      const outcomes: Outcome[] = req.outcomes.map((o, i) => {
        const ref = fromRef(o.ref, `outcomes[${i}].ref`);
        switch (o.result.case) {
          case "completion":
            return {
              ref,
              kind: "completion",
              statusCode: o.result.value.statusCode,
              headers: o.result.value.headers,
              body: decoder.decode(o.result.value.body),
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
              bodyExcerpt: decoder.decode(f.bodyExcerpt.subarray(0, MAX_EXCERPT_BYTES)),
              headers: f.headers,
            };
          }
          case "release":
            return { ref, kind: "release", reason: o.result.value.reason };
          default:
            throw new InvalidArgumentError(`outcomes[${i}].result`, "is required");
        }
      });
      const dispositions = await leases.report(outcomes);
      return create(ReportResultsResponseSchema, {
        results: outcomes.map((o) => ({
          ref: { requestId: o.ref.requestId, token: o.ref.token },
          disposition:
            DISPOSITION_TO_PROTO[dispositions.get(`${o.ref.requestId}/${o.ref.token}`) ?? "lost"],
        })),
      });
    },
  };
}
