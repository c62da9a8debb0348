/**
 * StreamAuthority (src/api/stream-auth.ts): streams grouped by credential,
 * one authentication per credential per check however many streams it has,
 * and a refusal ends exactly that credential's streams.
 */
import { createHandlerContext } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { StreamAuthority } from "../../src/api/stream-auth.js";
import { AuthError } from "../../src/auth/authenticator.js";
import type { Principal } from "../../src/auth/principal.js";
import { BatchService } from "../../src/gen/fusillade/v1/batch_service_pb.js";
import type { Notifications } from "../../src/storage/notifications.js";

/** A call of WatchBatch with `token`. */
function callWith(token: string) {
  return createHandlerContext({
    service: BatchService,
    method: BatchService.method.watchBatch,
    protocolName: "connect",
    requestMethod: "POST",
    url: "http://127.0.0.1:8080/fusillade.v1.BatchService/WatchBatch",
    requestHeader: { authorization: `Bearer ${token}`, host: "127.0.0.1:8080" },
    requestSignal: new AbortController().signal,
  });
}

/** Notifications that deliver what the test sends on the tokens channel. */
function fakeNotifications() {
  const listeners = new Set<(payload: string) => void>();
  const n = {
    on: (_channel: string, fn: (payload: string) => void) => {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
  } as unknown as Notifications;
  const notify = () => {
    for (const fn of listeners) fn("");
  };
  return { n, notify, listeners };
}

const CLIENT: Principal = { role: "client", tenant: "t", source: "token x" };

describe("StreamAuthority", () => {
  it("checks each credential once however many streams use it, and ends only a refused one's", async () => {
    const revoked = new Set<string>();
    const asked: string[] = [];
    const authenticate = async (authorization: string | null) => {
      asked.push(authorization ?? "");
      if (revoked.has(authorization ?? "")) {
        throw new AuthError("the token is not valid (unknown or revoked)", "unauthenticated");
      }
      return CLIENT;
    };
    const { n, notify, listeners } = fakeNotifications();
    const authority = new StreamAuthority(authenticate, n, 60_000);
    const a = Array.from({ length: 50 }, () => authority.open(callWith("a")));
    const b = Array.from({ length: 50 }, () => authority.open(callWith("b")));
    expect(listeners.size).toBe(1); // subscribed while streams are open

    await authority.check();
    expect(asked.sort()).toEqual(["Bearer a", "Bearer b"]);
    expect([...a, ...b].some((g) => g.signal.aborted)).toBe(false);

    // A revocation's NOTIFY checks at once; only "a"'s streams end, with the refusal.
    revoked.add("Bearer a");
    asked.length = 0;
    const aborted = new Promise((r) => a[0]!.signal.addEventListener("abort", r));
    notify();
    await aborted;
    expect(a.every((g) => g.signal.aborted && g.signal.reason instanceof AuthError)).toBe(true);
    expect(b.some((g) => g.signal.aborted)).toBe(false);
    expect(asked.sort()).toEqual(["Bearer a", "Bearer b"]);

    for (const g of [...a, ...b]) g.close();
    expect(listeners.size).toBe(0); // and no timer or listener is left behind
  });

  it("a database that cannot answer ends nothing: the next check asks again", async () => {
    let fail = true;
    const authority = new StreamAuthority(
      async () => {
        if (fail) throw Object.assign(new Error("connection refused"), { code: "ECONNREFUSED" });
        return CLIENT;
      },
      fakeNotifications().n,
      60_000,
    );
    const g = authority.open(callWith("c"));
    await authority.check();
    expect(g.signal.aborted).toBe(false);
    fail = false;
    await authority.check();
    expect(g.signal.aborted).toBe(false);
    g.close();
  });
});
