/** AdminService: model limits. */
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "../gen/fusillade/v1/admin_service_pb.js";
import type { ApiDeps } from "./deps.js";

/** The AdminService methods. */
export function adminMethods(_deps: ApiDeps): ServiceImpl<typeof AdminService> {
  return {
    async setModelLimit() {
      throw new ConnectError("not implemented yet", Code.Unimplemented);
    },
    async listModelLimits() {
      throw new ConnectError("not implemented yet", Code.Unimplemented);
    },
  };
}
