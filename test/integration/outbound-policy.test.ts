/**
 * The outbound policy through the real API and a real dispatcher
 * (docs/trust.md): with tokens and no allow-list, every spelling of a
 * forbidden endpoint is INVALID_ARGUMENT at upload (naming the field and
 * line, nothing written), and a name that passes upload but resolves to a
 * forbidden address fails at the dispatcher, after DNS, not retried; local
 * mode and a listed origin still reach a loopback upstream.
 */
import type dns from "node:dns";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { dispatcherConfig } from "../../src/config/dispatcher-config.js";
import { startDispatcher } from "../../src/dispatcher/dispatcher.js";
import { parseAllowList } from "../../src/domain/endpoints.js";
import { RequestState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { HttpExecutor } from "../../src/http/executor.js";
import { makeLogger } from "../../src/logger.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  items,
  startTestDispatcher,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { FORBIDDEN, PUBLIC } from "../helpers/forbidden-endpoints.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const ADMIN = "outbound-admin-token-0123456789abcdef";
let shared: TestControlPlane;
let sql: pg.Pool;
let upstream: Upstream;

beforeAll(async () => {
  shared = await startTestControlPlane({ adminToken: ADMIN });
  sql = new pg.Pool({ connectionString: shared.database.url, max: 2 });
  upstream = await startUpstream();
});
afterAll(async () => {
  await upstream?.close();
  await sql?.end();
  await shared?.close();
});

const jsonl = new TextEncoder().encode(
  [1, 2]
    .map((i) =>
      JSON.stringify({ custom_id: `c${i}`, method: "POST", url: "/v1/x", body: { model: "m" } }),
    )
    .join("\n"),
);

/** "ok", or the error as "<Code>: <message>". */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    const c = ConnectError.from(e);
    return `${Code[c.code]}: ${c.rawMessage}`;
  }
}

async function fileCount(): Promise<number> {
  return (await sql.query<{ n: number }>("SELECT count(*)::int AS n FROM files")).rows[0]!.n;
}

async function* uploadOf(endpoint: string) {
  yield { part: { case: "header" as const, value: { filename: "f.jsonl", endpoint } } };
  yield { part: { case: "chunk" as const, value: jsonl } };
}

describe("at upload, with tokens and no --allowed-endpoints", () => {
  test.each(FORBIDDEN)("%s is refused in every form, naming the field", async (endpoint, why) => {
    const before = await fileCount();
    const viaJsonl = await outcome(shared.batch.createFile({ jsonl, endpoint }));
    expect(viaJsonl).toMatch(/^InvalidArgument: endpoint: /);
    expect(viaJsonl).toMatch(why);
    const viaUpload = await outcome(shared.batch.uploadFile(uploadOf(endpoint)));
    expect(viaUpload).toMatch(/^InvalidArgument: endpoint: /);
    expect(viaUpload).toMatch(why);
    const viaTemplates = await outcome(
      shared.batch.createFile({
        templates: [
          { endpoint: "https://api.example.com", path: "/v1/x", body: '{"model":"m"}' },
          { endpoint, path: "/v1/x", body: '{"model":"m"}' },
        ],
      }),
    );
    expect(viaTemplates).toMatch(/^InvalidArgument: line 2: templates\[1\]\.endpoint: /);
    expect(viaTemplates).toMatch(why);
    expect(await fileCount()).toBe(before);
  });

  test("public endpoints are accepted", async () => {
    for (const endpoint of PUBLIC) {
      expect(await outcome(shared.batch.createFile({ jsonl, endpoint })), endpoint).toBe("ok");
    }
  });
});

describe("at the dispatcher, after DNS", () => {
  test("a name that resolves to loopback fails once, not retriable, and never reaches the upstream", async () => {
    const port = new URL(upstream.url).port;
    // Passes upload (a name); the dispatcher's resolver says 127.0.0.1.
    const endpoint = `http://models.example:${port}`;
    const batchId = await createTestBatch(shared.batch, endpoint, items("dns-m", 3), {
      maxRetries: 3,
    });
    // A dispatcher with a token: the policy comes from its config, as in `fusillade dispatcher`.
    const config = dispatcherConfig(
      { controlPlane: shared.url, token: ADMIN, logLevel: "silent" },
      {},
    );
    expect(config.denyPrivateNetworks).toBe(true);
    const toLoopback = ((_h: string, _o: unknown, cb: (...a: unknown[]) => void) =>
      cb(null, [{ address: "127.0.0.1", family: 4 }])) as unknown as typeof dns.lookup;
    const executor = new HttpExecutor({
      denyPrivateNetworks: config.denyPrivateNetworks,
      allowedHosts: config.allowedHosts,
      lookup: toLoopback,
    });
    const d = startDispatcher(config, makeLogger("silent"), { executor });
    try {
      const status = await waitForBatch(shared.batch, batchId, 30_000);
      expect(Number(status.counts!.failed)).toBe(3);
    } finally {
      await d.stop();
    }
    const { requests } = await shared.batch.listBatchRequests({ batchId });
    for (const r of requests) {
      expect(r.state).toBe(RequestState.FAILED);
      expect(r.attempt).toBe(1);
      expect(r.error?.code).toBe("network_error");
      expect(r.error?.message).toMatch(
        /models\.example resolves to 127\.0\.0\.1, which is a loopback address: refused by the outbound policy; list the host in --allowed-endpoints/,
      );
    }
    expect(upstream.deliveries.filter((x) => x.model === "dns-m")).toEqual([]);
  });
});

describe("where loopback upstreams still work", () => {
  test("local mode: a batch against a loopback upstream completes", async () => {
    const local = await startTestControlPlane({}, shared.database);
    const d = startTestDispatcher(local.url, { id: "local-d" });
    try {
      const batchId = await createTestBatch(local.batch, upstream.url, items("local-m", 3));
      const status = await waitForBatch(local.batch, batchId, 30_000);
      expect(Number(status.counts!.completed)).toBe(3);
    } finally {
      await d.stop();
      await local.stop();
    }
  });

  test("tokens and --allowed-endpoints: only listed origins, loopback included, pass", async () => {
    const listed = await startTestControlPlane(
      { adminToken: ADMIN, allowedEndpoints: parseAllowList("http://127.0.0.1:*", "test") },
      shared.database,
    );
    const config = dispatcherConfig(
      {
        controlPlane: listed.url,
        token: ADMIN,
        logLevel: "silent",
        allowedEndpoints: "http://127.0.0.1:*",
      },
      {},
    );
    expect(config).toMatchObject({ denyPrivateNetworks: true, allowedHosts: ["127.0.0.1"] });
    const d = startDispatcher({ ...config, id: "listed-d" }, makeLogger("silent"));
    try {
      const refused = await outcome(
        listed.batch.createFile({ jsonl, endpoint: "http://10.0.0.1" }),
      );
      expect(refused).toMatch(/^InvalidArgument: endpoint: .*not in the server's allowed/);
      const batchId = await createTestBatch(listed.batch, upstream.url, items("listed-m", 3));
      const status = await waitForBatch(listed.batch, batchId, 30_000);
      expect(Number(status.counts!.completed)).toBe(3);
    } finally {
      await d.stop();
      await listed.stop();
    }
  });
});
