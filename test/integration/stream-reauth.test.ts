/**
 * Streams opened with a token end with UNAUTHENTICATED soon after the token
 * is revoked (src/api/stream-auth.ts): at once on the revocation's NOTIFY,
 * on this replica and on another; by the periodic re-check when no
 * notification comes. Another token's streams go on.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { parseAllowList } from "../../src/domain/endpoints.js";
import { TokenRole } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { StreamBatchRequestsResponse_Kind } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import { clients, startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

const ADMIN = "test-admin-token-stream-reauth-0123";
const ENDPOINT = "http://127.0.0.1:9";
/** The periodic re-check of these control planes (the default is 5 s). */
const REAUTH_MS = 300;
/** The authenticator's cache lifetime: without a NOTIFY, a lookup may be this stale. */
const AUTH_CACHE_MS = 10_000;

let t: TestControlPlane;
let replica: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  const config = {
    adminToken: ADMIN,
    streamReauthIntervalMs: REAUTH_MS,
    allowedEndpoints: parseAllowList(ENDPOINT, "test"),
  };
  t = await startTestControlPlane(config);
  replica = await startTestControlPlane(config, t.database);
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});

afterAll(async () => {
  await sql?.end();
  await replica?.stop();
  await t?.close();
});

/** A client token of `tenant`, its id, and a running batch of its tenant (nothing runs it). */
async function tokenWithBatch(tenant: string) {
  const made = await t.admin.createToken({ role: TokenRole.CLIENT, tenant });
  const c = clients(t.url, "connect-h2", made.secret);
  const { file } = await c.batch.createFile({
    endpoint: ENDPOINT,
    jsonl: new TextEncoder().encode(
      JSON.stringify({ custom_id: "a", method: "POST", url: "/v1/x", body: { model: "m" } }),
    ),
  });
  const batchId = (await c.batch.createBatch({ fileId: file!.id })).batch!.id;
  return { id: made.token!.id, secret: made.secret, batchId };
}

/** How a followed stream ended: its code (or "ok") and when. */
interface Ending {
  code: Code | "ok";
  message: string;
  at: number;
}

/**
 * Reads `stream` in the background: `ready` resolves at the first message
 * `isReady` accepts, `ended` when the stream ends, `messages` counts them.
 */
function follow<T>(stream: AsyncIterable<T>, isReady: (m: T) => boolean = () => true) {
  let markReady!: () => void;
  const ready = new Promise<void>((r) => {
    markReady = r;
  });
  const state = { messages: 0 };
  const ended: Promise<Ending> = (async () => {
    try {
      for await (const m of stream) {
        state.messages++;
        if (isReady(m)) markReady();
      }
      return { code: "ok" as const, message: "", at: Date.now() };
    } catch (e) {
      const ce = ConnectError.from(e);
      return { code: ce.code, message: ce.rawMessage, at: Date.now() };
    } finally {
      markReady(); // a stream that ends early must not leave the test waiting for it
    }
  })();
  return { ready, ended, state };
}

/** `p`, or a rejection naming `what` after `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** WatchBatch and StreamBatchRequests of `batchId` with `secret` on `url`, both open. */
async function openStreams(url: string, secret: string, batchId: string) {
  const c = clients(url, "connect-h2", secret);
  const watch = follow(c.batch.watchBatch({ batchId }));
  const requests = follow(
    c.batch.streamBatchRequests({ batchId }),
    (m) => m.kind === StreamBatchRequestsResponse_Kind.SNAPSHOT_END,
  );
  await Promise.all([watch.ready, requests.ready]);
  return { watch, requests };
}

describe("streams of a revoked token", () => {
  test("end with UNAUTHENTICATED at once, here and on another replica; another token's go on", async () => {
    const gone = await tokenWithBatch("reauth-a");
    const kept = await tokenWithBatch("reauth-a");
    const here = await openStreams(t.url, gone.secret, gone.batchId);
    const there = await openStreams(replica.url, gone.secret, gone.batchId);
    const other = await openStreams(t.url, kept.secret, gone.batchId); // same tenant's batch

    const revokedAt = Date.now();
    await t.admin.revokeToken({ id: gone.id });
    // The NOTIFY wakes the re-check: well under the periodic interval plus the cache's 10 s.
    const endings = await within(
      Promise.all([here, there].flatMap((s) => [s.watch.ended, s.requests.ended])),
      AUTH_CACHE_MS,
      "the revoked token's four streams ending",
    );
    for (const e of endings) {
      expect(e.code).toBe(Code.Unauthenticated);
      expect(e.message).toMatch(/credential is no longer accepted: the token is not valid/);
      expect(e.at - revokedAt).toBeLessThan(3000);
    }

    // The other token's streams are still open and still delivering: cancel the batch and
    // they report it, then end as they do for a finished batch.
    const before = other.watch.state.messages;
    await clients(t.url, "connect-h2", kept.secret).batch.cancelBatch({ batchId: gone.batchId });
    const [watchEnd, requestsEnd] = await Promise.all([other.watch.ended, other.requests.ended]);
    expect(watchEnd.code).toBe("ok");
    expect(requestsEnd.code).toBe("ok");
    expect(other.watch.state.messages).toBeGreaterThan(before);
  });

  test("end by the periodic re-check when the revocation sends no NOTIFY", async () => {
    const gone = await tokenWithBatch("reauth-b");
    const here = await openStreams(t.url, gone.secret, gone.batchId);
    const revokedAt = Date.now();
    // Revoked behind the API's back: no NOTIFY, so the cached lookup stays until it expires.
    await sql.query("UPDATE api_tokens SET revoked_at = now() WHERE id = $1", [gone.id]);
    const endings = await within(
      Promise.all([here.watch.ended, here.requests.ended]),
      AUTH_CACHE_MS + REAUTH_MS + 5000,
      "the revoked token's streams ending without a NOTIFY",
    );
    for (const e of endings) {
      expect(e.code).toBe(Code.Unauthenticated);
      expect(e.at - revokedAt).toBeLessThan(AUTH_CACHE_MS + REAUTH_MS + 2000);
    }
  });

  test("a deleted token's streams end too", async () => {
    const gone = await tokenWithBatch("reauth-c");
    const here = await openStreams(t.url, gone.secret, gone.batchId);
    await sql.query(
      "WITH d AS (DELETE FROM api_tokens WHERE id = $1) SELECT pg_notify('fusillade_tokens', '')",
      [gone.id],
    );
    const endings = await within(
      Promise.all([here.watch.ended, here.requests.ended]),
      AUTH_CACHE_MS,
      "the deleted token's streams ending",
    );
    for (const e of endings) expect(e.code).toBe(Code.Unauthenticated);
  });
});
