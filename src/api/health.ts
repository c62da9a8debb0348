/** grpc.health.v1.Health: SERVING while the database answers. */
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { NotFoundError } from "../domain/errors.js";
import {
  type Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as Status,
} from "../gen/grpc/health/v1/health_pb.js";
import type { ApiDeps } from "./deps.js";

/** Services this server reports on ("" is the server as a whole). */
const KNOWN = new Set([
  "",
  "fusillade.v1.BatchService",
  "fusillade.v1.DispatchService",
  "fusillade.v1.AdminService",
]);
/** How often Watch re-checks the database. */
const WATCH_INTERVAL_MS = 5000;

async function status(deps: ApiDeps, service: string): Promise<Status> {
  if (!KNOWN.has(service)) return Status.SERVICE_UNKNOWN;
  if (deps.shutdownSignal.aborted) return Status.NOT_SERVING;
  try {
    await deps.db.query("SELECT 1");
    return Status.SERVING;
  } catch {
    return Status.NOT_SERVING;
  }
}

/** The Health service; `watchIntervalMs` is how often Watch re-checks. */
export function healthMethods(
  deps: ApiDeps,
  watchIntervalMs = WATCH_INTERVAL_MS,
): ServiceImpl<typeof Health> {
  return {
    async check(req) {
      const s = await status(deps, req.service);
      // The health protocol: Check of an unknown service fails with NOT_FOUND
      // (Watch answers SERVICE_UNKNOWN instead and keeps watching).
      if (s === Status.SERVICE_UNKNOWN) throw new NotFoundError("service", req.service);
      return create(HealthCheckResponseSchema, { status: s });
    },
    async *watch(req, ctx) {
      let last: Status | undefined;
      while (!ctx.signal.aborted) {
        const s = await status(deps, req.service);
        if (s !== last) {
          last = s;
          yield create(HealthCheckResponseSchema, { status: s });
        }
        // Resolves early (never rejects) on abort; leaves no listener behind.
        await sleep(watchIntervalMs, undefined, { signal: ctx.signal }).catch(() => undefined);
      }
    },
  };
}
