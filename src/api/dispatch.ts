/** DispatchService: leases for dispatchers. */
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { DispatchService } from "../gen/fusillade/v1/dispatch_service_pb.js";
import type { ApiDeps } from "./deps.js";

/** The DispatchService methods. */
export function dispatchMethods(_deps: ApiDeps): ServiceImpl<typeof DispatchService> {
  return {
    async acquireLeases() {
      throw new ConnectError("not implemented yet", Code.Unimplemented);
    },
    async renewLeases() {
      throw new ConnectError("not implemented yet", Code.Unimplemented);
    },
    async reportResults() {
      throw new ConnectError("not implemented yet", Code.Unimplemented);
    },
  };
}
