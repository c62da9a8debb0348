/**
 * Every service the control plane serves, as one routes function.
 *
 * src/api/ owns the edge: thin Connect handlers, proto <-> domain converters,
 * the one error mapping, the HTTP/1.1 + h2c server. Proto types stop here. It
 * may import every lower layer (src/leases, src/metrics, src/storage,
 * src/auth, src/config, src/http, src/domain, src/gen, the logger, the
 * plain-route types), never src/dispatcher, src/web or src/cli.
 */
import type { ConnectRouter } from "@connectrpc/connect";
import { AdminService } from "../gen/fusillade/v1/admin_service_pb.js";
import { BatchService } from "../gen/fusillade/v1/batch_service_pb.js";
import { DispatchService } from "../gen/fusillade/v1/dispatch_service_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import type { LeaseService } from "../leases/lease-service.js";
import { adminMethods } from "./admin.js";
import { batchModelMethods } from "./batch-models.js";
import { batchMethods } from "./batches.js";
import type { ApiDeps } from "./deps.js";
import { dispatchMethods } from "./dispatch.js";
import { fileMethods } from "./files.js";
import { healthMethods } from "./health.js";
import { routeMethods } from "./route-methods.js";
import { streamMethods } from "./streams.js";

/**
 * BatchService answers are compressed (for clients that accept it) only from
 * this size. Connect compresses each message on its own, in zlib's thread
 * pool: ~180 µs for a 1 KiB message on the bench machine (5.8 MB/s), which
 * held GetBatchResults of 20,000 lines of 1 KiB bodies at ~4,000 lines/s,
 * 0.055 of plain SQL's rate (0.2 without; bench reads, bench/RESULTS.md
 * 2026-12-06). From 16 KiB the per-message cost is a small part of zlib's
 * own, and the message gains 3× or so, which a slow link may need.
 */
export const BATCH_COMPRESS_MIN_BYTES = 16 * 1024;

/** Registers every service on `router`. */
export function routes(deps: ApiDeps, leases: LeaseService): (router: ConnectRouter) => void {
  return (router) => {
    router.service(
      BatchService,
      {
        ...fileMethods(deps),
        ...batchMethods(deps),
        ...streamMethods(deps),
        ...batchModelMethods(deps),
      },
      { compressMinBytes: BATCH_COMPRESS_MIN_BYTES },
    );
    router.service(DispatchService, dispatchMethods(deps, leases));
    router.service(AdminService, { ...adminMethods(deps), ...routeMethods(deps) });
    router.service(Health, healthMethods(deps));
  };
}
