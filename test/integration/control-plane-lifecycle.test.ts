/**
 * Long-lived calls and shutdown leave nothing behind: health Watch holds one
 * abort listener however long it runs, and a second close() of a control
 * plane does not run the shutdown steps again (or in another order).
 */

import { randomBytes } from "node:crypto";
import { getEventListeners } from "node:events";
import { createHandlerContext } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { healthMethods } from "../../src/api/health.js";
import { Keyring } from "../../src/auth/secrets.js";
import { CONTROL_PLANE_DEFAULTS } from "../../src/config/config.js";
import { startControlPlane } from "../../src/control-plane.js";
import { OPEN_POLICY } from "../../src/domain/endpoints.js";
import { Health } from "../../src/gen/grpc/health/v1/health_pb.js";
import { makeLogger } from "../../src/logger.js";
import type { Db } from "../../src/storage/db.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { createTestDatabase } from "../helpers/db.js";

let t: TestControlPlane;

beforeAll(async () => {
  t = await startTestControlPlane();
});
afterAll(async () => {
  await t?.close();
});

describe("health Watch", () => {
  it("holds at most one abort listener on its call however many checks it runs", async () => {
    const CHECKS = 10;
    let checks = 0;
    let reached: () => void = () => undefined;
    const tenChecks = new Promise<void>((resolve) => {
      reached = resolve;
    });
    // The real database, counting the checks Watch makes.
    const db = {
      query: (text: string) => {
        if (++checks === CHECKS) reached();
        return t.cp.db.query(text);
      },
    } as unknown as Db;
    const deps = {
      db,
      config: CONTROL_PLANE_DEFAULTS,
      log: makeLogger("silent"),
      notifications: undefined as never,
      shutdownSignal: new AbortController().signal,
      endpointPolicy: () => OPEN_POLICY,
      keyring: new Keyring(randomBytes(32)),
      authenticate: undefined as never, // no streams here
    };
    const call = new AbortController();
    const ctx = createHandlerContext({
      service: Health,
      method: Health.method.watch,
      protocolName: "connect",
      requestMethod: "POST",
      url: "http://test/",
      requestSignal: call.signal,
    });
    const watch = healthMethods(deps, 5).watch;
    if (watch === undefined) throw new Error("Watch is not implemented");
    const stream = watch({ $typeName: "grpc.health.v1.HealthCheckRequest", service: "" }, ctx)[
      Symbol.asyncIterator
    ]();
    await stream.next(); // SERVING
    const before = getEventListeners(ctx.signal, "abort").length;
    const rest = stream.next(); // no change: Watch keeps checking until the call ends
    await tenChecks;
    expect(getEventListeners(ctx.signal, "abort").length).toBeLessThanOrEqual(before + 1);
    call.abort();
    expect((await rest).done).toBe(true);
  });
});

describe("control plane close()", () => {
  it("runs its shutdown steps once, however often it is called", async () => {
    const database = await createTestDatabase();
    const lines: string[] = [];
    const log = pino({ level: "warn" }, { write: (s: string) => lines.push(s) });
    try {
      const cp = await startControlPlane(
        { ...CONTROL_PLANE_DEFAULTS, port: 0, databaseUrl: database.url },
        log,
      );
      // Count the database's close (the steps run last pushed first: server, …, database).
      let dbCloses = 0;
      const close = cp.db.close.bind(cp.db);
      cp.db.close = () => {
        dbCloses++;
        return close();
      };
      await cp.close();
      await cp.close();
      await Promise.all([cp.close(), cp.close()]);
      expect(dbCloses).toBe(1);
      expect(lines.filter((l) => l.includes("shutdown step failed"))).toEqual([]);
    } finally {
      await database.drop();
    }
  });
});
