/**
 * The generated code under the client, one level down (`gen` of
 * `fusillade/client`): the services for `createClient` and `raw`, and the
 * proto messages and enums as the wire has them (int64 as bigint, enums as
 * numbers, timestamps as messages).
 */
export { AdminService, TokenRole } from "../gen/fusillade/v1/admin_service_pb.js";
export type {
  GetBatchStatusResponse,
  GetRequestResponse,
  ListBatchModelsResponse,
  RequestAttempt,
} from "../gen/fusillade/v1/batch_service_pb.js";
export { BatchService } from "../gen/fusillade/v1/batch_service_pb.js";
export type {
  Batch,
  BatchRequest,
  File,
  ModelLimit,
  ModelShare,
  RequestCounts,
  RequestResponse,
} from "../gen/fusillade/v1/resources_pb.js";
export { BatchState, RequestState } from "../gen/fusillade/v1/resources_pb.js";
