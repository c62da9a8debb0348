/** BatchService streaming methods: StreamBatchRequests, WatchBatch, GetBatchResults. */
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { BatchService } from "../gen/fusillade/v1/batch_service_pb.js";
import type { ApiDeps } from "./deps.js";

/** The streaming methods of BatchService. */
export function streamMethods(
  _deps: ApiDeps,
): Pick<ServiceImpl<typeof BatchService>, "streamBatchRequests" | "watchBatch" | "getBatchResults"> {
  return {
    // biome-ignore lint/correctness/useYield: not implemented yet
    async *streamBatchRequests() {
      throw new ConnectError("not implemented yet", Code.Unimplemented);
    },
    // biome-ignore lint/correctness/useYield: not implemented yet
    async *watchBatch() {
      throw new ConnectError("not implemented yet", Code.Unimplemented);
    },
    // biome-ignore lint/correctness/useYield: not implemented yet
    async *getBatchResults() {
      throw new ConnectError("not implemented yet", Code.Unimplemented);
    },
  };
}
