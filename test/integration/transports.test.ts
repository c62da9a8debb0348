/**
 * One port, every transport: Connect over HTTP/2 and HTTP/1.1, gRPC and
 * gRPC-Web through Connect-ES, @grpc/grpc-js, and a plain JSON POST.
 */
import http from "node:http";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  BatchService,
  CreateBatchRequestSchema,
  type CreateBatchResponse,
  CreateFileRequestSchema,
  type CreateFileResponse,
  GetBatchStatusRequestSchema,
  type GetBatchStatusResponse,
} from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { BatchState } from "../../src/gen/fusillade/v1/resources_pb.js";
import {
  Health,
  HealthCheckRequestSchema,
  type HealthCheckResponse,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../src/gen/grpc/health/v1/health_pb.js";
import { clients, startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { grpcJsClient, unary } from "../helpers/grpc-js.js";

let t: TestControlPlane;
const grpcJsClients: grpc.Client[] = [];

beforeAll(async () => {
  t = await startTestControlPlane();
});
afterAll(async () => {
  for (const c of grpcJsClients) c.close();
  await t?.close();
});

/** A JSONL body of `n` lines for `model`. */
function jsonl(model: string, n: number): Uint8Array {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `${model}-${i}`,
      method: "POST",
      url: "/v1/chat/completions",
      body: { model },
    }),
  );
  return new TextEncoder().encode(lines.join("\n"));
}

const UNKNOWN_BATCH = "00000000-0000-4000-8000-000000000000";

function connectBatchClient(kind: "connect-h2" | "connect-h1" | "grpc" | "grpc-web") {
  if (kind === "grpc-web") {
    return createClient(
      BatchService,
      createGrpcWebTransport({ baseUrl: t.url, httpVersion: "1.1" }),
    );
  }
  return clients(t.url, kind).batch;
}

describe.each(["connect-h2", "connect-h1", "grpc", "grpc-web"] as const)(
  "Connect-ES client, %s",
  (kind) => {
    test("CreateFile, CreateBatch, GetBatchStatus", async () => {
      const client = connectBatchClient(kind);
      const model = `m-${kind}`;
      const { file } = await client.createFile({
        filename: `${kind}.jsonl`,
        jsonl: jsonl(model, 3),
        endpoint: "http://upstream.test",
      });
      expect(file?.templateCount).toBe(3n);
      expect(file?.models).toEqual([model]);
      const { batch } = await client.createBatch({ fileId: file!.id });
      expect(batch?.fileId).toBe(file!.id);
      const status = await client.getBatchStatus({ batchId: batch!.id });
      expect(status.batchId).toBe(batch!.id);
      expect(status.state).toBe(BatchState.IN_PROGRESS);
      expect(status.counts?.total).toBe(3n);
      expect(status.counts?.pending).toBe(3n);
    });

    test("an unknown batch is NOT_FOUND", async () => {
      const client = connectBatchClient(kind);
      const err = await client.getBatchStatus({ batchId: UNKNOWN_BATCH }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.NotFound);
      expect((err as ConnectError).rawMessage).toContain(UNKNOWN_BATCH);
    });

    test("a bad line is INVALID_ARGUMENT naming the line", async () => {
      const client = connectBatchClient(kind);
      const body = new TextEncoder().encode(
        '{"custom_id":"a","method":"POST","url":"/v1/x","body":{"model":"m"}}\n{oops}\n',
      );
      const err = await client
        .createFile({ jsonl: body, endpoint: "http://upstream.test" })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.InvalidArgument);
      expect((err as ConnectError).rawMessage).toContain("line 2");
    });
  },
);

describe("@grpc/grpc-js client", () => {
  function batchClient() {
    const c = grpcJsClient(BatchService, t.url);
    grpcJsClients.push(c);
    return c;
  }

  test("CreateFile, CreateBatch, GetBatchStatus", async () => {
    const client = batchClient();
    const created = await unary<CreateFileResponse>(
      client,
      "createFile",
      create(CreateFileRequestSchema, {
        filename: "grpc-js.jsonl",
        jsonl: jsonl("m-grpc-js", 4),
        endpoint: "http://upstream.test",
      }),
    );
    expect(created.file?.templateCount).toBe(4n);
    const { batch } = await unary<CreateBatchResponse>(
      client,
      "createBatch",
      create(CreateBatchRequestSchema, { fileId: created.file!.id }),
    );
    const status = await unary<GetBatchStatusResponse>(
      client,
      "getBatchStatus",
      create(GetBatchStatusRequestSchema, { batchId: batch!.id }),
    );
    expect(status.state).toBe(BatchState.IN_PROGRESS);
    expect(status.counts?.total).toBe(4n);
    expect(status.counts?.pending).toBe(4n);
  });

  test("errors carry their gRPC status code", async () => {
    const client = batchClient();
    const notFound = (await unary(
      client,
      "getBatchStatus",
      create(GetBatchStatusRequestSchema, { batchId: UNKNOWN_BATCH }),
    ).catch((e: unknown) => e)) as grpc.ServiceError;
    expect(notFound.code).toBe(grpc.status.NOT_FOUND);
    expect(notFound.code).toBe(5);
    expect(notFound.details).toContain(UNKNOWN_BATCH);

    const invalid = (await unary(
      client,
      "createBatch",
      create(CreateBatchRequestSchema, { fileId: "" }),
    ).catch((e: unknown) => e)) as grpc.ServiceError;
    expect(invalid.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(invalid.details).toContain("file_id");
  });

  test("grpc.health.v1.Health/Check answers SERVING", async () => {
    const client = grpcJsClient(Health, t.url);
    grpcJsClients.push(client);
    for (const service of ["", "fusillade.v1.BatchService", "fusillade.v1.DispatchService"]) {
      const res = await unary<HealthCheckResponse>(
        client,
        "check",
        create(HealthCheckRequestSchema, { service }),
      );
      expect(res.status).toBe(ServingStatus.SERVING);
    }
    const unknown = await unary<HealthCheckResponse>(
      client,
      "check",
      create(HealthCheckRequestSchema, { service: "no.such.Service" }),
    ).catch((e: { code: number }) => e);
    expect((unknown as { code: number }).code).toBe(5); // NOT_FOUND, as the health protocol says
  });
});

describe("plain HTTP/1.1 JSON (curl-style)", () => {
  const path = "/fusillade.v1.BatchService/GetBatchStatus";

  test("fetch POST of JSON to GetBatchStatus", async () => {
    const { file } = await t.batch.createFile({
      jsonl: jsonl("m-fetch", 2),
      endpoint: "http://upstream.test",
    });
    const { batch } = await t.batch.createBatch({ fileId: file!.id });
    const res = await fetch(`${t.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ batchId: batch!.id }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    const body = (await res.json()) as Record<string, unknown>;
    // Zero values are emitted too (alwaysEmitImplicit): a client sees every counter.
    expect(body).toEqual({
      batchId: batch!.id,
      state: "BATCH_STATE_IN_PROGRESS",
      openaiStatus: "in_progress",
      counts: {
        total: "2",
        pending: "2",
        inProgress: "0",
        completed: "0",
        failed: "0",
        canceled: "0",
        expired: "0",
      },
      // Its share of its model while it runs (docs/fair-share.md): nothing claimed yet.
      shares: [
        {
          model: "m-fetch",
          inFlight: 0,
          modelInFlight: 0,
          limit: 10,
          activeBatches: 1,
          running: 0,
          modelRunning: 0,
        },
      ],
      priority: 0,
    });
  });

  test("an unknown batch is a 404 with the Connect error body", async () => {
    const res = await fetch(`${t.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ batch_id: UNKNOWN_BATCH }),
    });
    expect(res.status).toBe(404);
    const body = (await res.json()) as { code: string; message: string };
    expect(body.code).toBe("not_found");
    expect(body.message).toContain(UNKNOWN_BATCH);
  });

  test("the response really is HTTP/1.1 (node:http, no upgrade)", async () => {
    const { statusCode, httpVersion, body } = await new Promise<{
      statusCode: number;
      httpVersion: string;
      body: string;
    }>((resolve, reject) => {
      const req = http.request(
        `${t.url}${path}`,
        { method: "POST", headers: { "content-type": "application/json" }, agent: false },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => {
            text += d;
          });
          res.on("end", () =>
            resolve({ statusCode: res.statusCode ?? 0, httpVersion: res.httpVersion, body: text }),
          );
          res.on("error", reject);
        },
      );
      req.on("error", reject);
      req.end(JSON.stringify({ batchId: "not-an-id" }));
    });
    expect(httpVersion).toBe("1.1");
    expect(statusCode).toBe(404);
    expect(JSON.parse(body)).toMatchObject({ code: "not_found" });
  });
});

describe("shutdown", () => {
  test("closes idle HTTP/1.1 keep-alive connections at once (no 2 s cut-off wait)", async () => {
    // A second replica on the same database, so the shared one stays up.
    const replica = await startTestControlPlane({}, t.database);
    try {
      const agent = new http.Agent({ keepAlive: true });
      const socketClosed = new Promise<void>((resolve, reject) => {
        const req = http.request(
          `${replica.url}/fusillade.v1.BatchService/ListFiles`,
          { method: "POST", headers: { "content-type": "application/json" }, agent },
          (res) => {
            res.resume();
            res.on("end", () => {
              expect(res.statusCode).toBe(200);
              expect(res.headers.connection).toBe("keep-alive");
            });
            res.on("error", reject);
          },
        );
        req.on("socket", (socket) => socket.once("close", () => resolve()));
        req.on("error", reject);
        req.end("{}");
      });
      // The response has arrived and the socket sits idle in the agent.
      await new Promise<void>((resolve) => agent.once("free", () => resolve()));
      // The server cuts whatever is left 2 s after its close begins (src/api/server.ts); the
      // socket closing sooner, counted from before the stop, was closed as idle.
      const CUT_OFF_MS = 2000;
      const started = performance.now();
      await replica.stop();
      await socketClosed;
      expect(performance.now() - started).toBeLessThan(CUT_OFF_MS);
      agent.destroy();
    } finally {
      await replica.stop();
    }
  });
});
