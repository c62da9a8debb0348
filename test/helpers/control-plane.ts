/**
 * A control plane on its own throw-away database, on a real socket, with
 * Connect clients for each service (HTTP/2 by default).
 */
import { createHash } from "node:crypto";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { CONTROL_PLANE_DEFAULTS, type ControlPlaneConfig } from "../../src/config/config.js";
import { type ControlPlane, startControlPlane } from "../../src/control-plane.js";
import { AdminService } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { BatchService } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { DispatchService } from "../../src/gen/fusillade/v1/dispatch_service_pb.js";
import { type Logger, makeLogger } from "../../src/logger.js";
import { createTestDatabase, type TestDatabase } from "./db.js";

export interface TestControlPlane {
  cp: ControlPlane;
  url: string;
  /** The test database (shared by every replica started on it). */
  database: TestDatabase;
  batch: Client<typeof BatchService>;
  dispatch: Client<typeof DispatchService>;
  admin: Client<typeof AdminService>;
  /** Stops the control plane (the database stays until `drop`). */
  stop(): Promise<void>;
  /** Stops and drops the database. */
  close(): Promise<void>;
}

/** Connect-protocol clients over HTTP/2 (or HTTP/1.1), or gRPC; sending `token` when given. */
export function clients(
  url: string,
  protocol: "connect-h2" | "connect-h1" | "grpc" = "connect-h2",
  token?: string,
  ca?: string,
) {
  const nodeOptions = ca === undefined ? undefined : { ca };
  const interceptors: Interceptor[] =
    token === undefined
      ? []
      : [
          (next) => (req) => {
            req.header.set("authorization", `Bearer ${token}`);
            return next(req);
          },
        ];
  const transport =
    protocol === "grpc"
      ? createGrpcTransport({ baseUrl: url, interceptors, nodeOptions })
      : createConnectTransport({
          baseUrl: url,
          httpVersion: protocol === "connect-h1" ? "1.1" : "2",
          interceptors,
          nodeOptions,
        });
  return {
    batch: createClient(BatchService, transport),
    dispatch: createClient(DispatchService, transport),
    admin: createClient(AdminService, transport),
  };
}

/**
 * The key that encrypts API keys in tests: one for every test database and
 * every process (spawned ones get it as FUSILLADE_SECRET_KEY), so replicas
 * started either way agree.
 */
export const TEST_SECRET_KEY = createHash("sha256").update("fusillade-test-key").digest("base64");

/** The key of a test database's control planes. */
export function testSecretKey(_db: TestDatabase): string {
  return TEST_SECRET_KEY;
}

/**
 * Starts a control plane on a fresh database (or on `database`, to run a
 * second replica on the same one).
 */
export async function startTestControlPlane(
  config: Partial<ControlPlaneConfig> = {},
  database?: TestDatabase,
  log: Logger = makeLogger(process.env.FUSILLADE_TEST_LOG ?? "silent"),
): Promise<TestControlPlane> {
  const db = database ?? (await createTestDatabase());
  const cp = await startControlPlane(
    {
      ...CONTROL_PLANE_DEFAULTS,
      port: 0,
      logLevel: process.env.FUSILLADE_TEST_LOG ?? "silent",
      // Replicas on one database share the key (one per test database).
      secretKey: { key: testSecretKey(db) },
      ...config,
      databaseUrl: db.url,
    },
    log,
  );
  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= cp.close();
    return stopped;
  };
  return {
    cp,
    url: cp.url,
    database: db,
    // With an admin token configured, the test's clients are admins.
    ...clients(cp.url, "connect-h2", config.adminToken, config.tls?.cert),
    stop,
    close: async () => {
      await stop();
      if (!database) await db.drop();
    },
  };
}
