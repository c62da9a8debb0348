/**
 * The dispatcher's half of the outbound policy (src/http/outbound-guard.ts,
 * docs/trust.md): every spelling of the table refused before a connection,
 * every forbidden address refused after DNS, and local mode still reaching a
 * loopback upstream.
 */
import type dns from "node:dns";
import dnsPromises from "node:dns/promises";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import { type AddressInfo, isIP } from "node:net";
import os from "node:os";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { ForbiddenAddresses } from "../../src/domain/forbidden-addresses.js";
import { HttpExecutor } from "../../src/http/executor.js";
import { ENDPOINT_DENIED, OutboundGuard } from "../../src/http/outbound-guard.js";
import { FORBIDDEN, PUBLIC } from "../helpers/forbidden-endpoints.js";

/** A loopback upstream that counts the connections it is offered. */
let server: Server;
let port: number;
let connections = 0;
beforeAll(async () => {
  server = createServer((_req, res) => res.end('{"ok":true}'));
  server.on("connection", () => connections++);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

/** A resolver that answers every name with `addresses`, as a hostile DNS record would. */
function answering(...addresses: string[]): typeof dns.lookup {
  return ((_host: string, _options: unknown, callback: (...a: unknown[]) => void) =>
    callback(
      null,
      addresses.map((address) => ({ address, family: isIP(address) })),
    )) as unknown as typeof dns.lookup;
}

function resolveWith(guard: OutboundGuard, base: typeof dns.lookup | undefined, host: string) {
  return new Promise<{ err: NodeJS.ErrnoException | null; address?: unknown }>((resolve) =>
    guard.lookup(base)(host, { family: 0 }, (err, address) => resolve({ err, address })),
  );
}

const post = (url: string) => ({ method: "POST", url, headers: [], body: "" });

/** The address an endpoint of the table names, as a resolver would return it; undefined for a name. */
function addressOf(endpoint: string): string | undefined {
  const host = new URL(endpoint).hostname.replace(/^\[|\]$/g, "");
  return isIP(host) === 0 ? undefined : host;
}

describe("before DNS: the URL's literal host", () => {
  const executor = new HttpExecutor({ denyPrivateNetworks: true, connectTimeoutMs: 500 });
  afterAll(() => executor.close());

  test.each(FORBIDDEN)("%s fails at once, not retriable, naming the range", async (url, why) => {
    const out = await executor.execute(post(url));
    expect(out).toMatchObject({ kind: "failure", code: "network_error", retriable: false });
    const message = out.kind === "failure" ? out.message : "";
    expect(message).toMatch(why);
    expect(message).toContain(`[${ENDPOINT_DENIED}]`);
    expect(message).toContain("--allowed-endpoints");
  });

  test.each(PUBLIC)("%s is not refused", (url) => {
    expect(new OutboundGuard([]).literalRefusal(new URL(url).hostname)).toBeUndefined();
  });

  test("a loopback upstream in any spelling is never connected to; local mode reaches it", async () => {
    const before = connections;
    for (const host of ["127.0.0.1", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]", "localhost"]) {
      const out = await executor.execute(post(`http://${host}:${port}/v1/x`));
      expect(out, host).toMatchObject({ kind: "failure", retriable: false });
    }
    expect(connections).toBe(before);
    const local = new HttpExecutor();
    try {
      const out = await local.execute(post(`http://127.0.0.1:${port}/v1/x`));
      expect(out).toMatchObject({ kind: "completion", statusCode: 200 });
      expect(connections).toBe(before + 1);
    } finally {
      await local.close();
    }
  });
});

describe("after DNS: the addresses a name resolves to", () => {
  const addresses = FORBIDDEN.flatMap(([url, why]) => {
    const a = addressOf(url);
    return a === undefined ? [] : [[a, why] as const];
  });

  test.each(addresses)("a name resolving to %s is refused", async (address, why) => {
    const { err } = await resolveWith(new OutboundGuard([]), answering(address), "api.example");
    expect(err?.code).toBe(ENDPOINT_DENIED);
    expect(err?.message).toContain(`api.example resolves to ${address}, which `);
    expect(err?.message).toMatch(why);
  });

  test("the dotted IPv4-mapped form a resolver may print is refused too", async () => {
    const { err } = await resolveWith(
      new OutboundGuard([]),
      answering("::ffff:127.0.0.1"),
      "api.example",
    );
    expect(err?.message).toMatch(/loopback address \(in its IPv4-mapped IPv6 form\)/);
  });

  test("one forbidden address among public ones refuses the name", async () => {
    const { err } = await resolveWith(
      new OutboundGuard([]),
      answering("8.8.8.8", "10.0.0.7"),
      "api.example",
    );
    expect(err?.code).toBe(ENDPOINT_DENIED);
  });

  test("public addresses pass; an allowed host may resolve anywhere", async () => {
    const ok = await resolveWith(
      new OutboundGuard([]),
      answering("8.8.8.8", "2001:4860:4860::8888"),
      "api.example",
    );
    expect(ok).toEqual({ err: null, address: "8.8.8.8" });
    const listed = await resolveWith(
      new OutboundGuard(["*.internal.example"]),
      answering("10.0.0.7"),
      "llm.internal.example",
    );
    expect(listed).toEqual({ err: null, address: "10.0.0.7" });
  });

  test("localhost, through the system's resolver, is refused after DNS", async () => {
    const { err } = await resolveWith(new OutboundGuard([]), undefined, "localhost");
    expect(err?.code).toBe(ENDPOINT_DENIED);
    expect(err?.message).toMatch(/localhost resolves to (127\.0\.0\.1|::1), which is a loopback/);
  });

  test("this host's own name is refused after DNS (loopback or an interface's address)", async (ctx) => {
    const resolvable = await dnsPromises.lookup(os.hostname()).catch(() => undefined);
    if (resolvable === undefined) ctx.skip();
    const { err } = await resolveWith(new OutboundGuard([]), undefined, os.hostname());
    expect(err?.code).toBe(ENDPOINT_DENIED);
    expect(err?.message).toMatch(/which is (a loopback address|an address of this host|a private)/);
  });

  test("this host's own addresses are refused, public or not", async () => {
    const guard = new OutboundGuard([], ["203.0.113.7", "2001:db8::7"]);
    for (const a of ["203.0.113.7", "2001:db8::7", "::ffff:203.0.113.7"]) {
      const { err } = await resolveWith(guard, answering(a), "me.example");
      expect(err?.message, a).toMatch(/an address of this host/);
    }
    expect(new ForbiddenAddresses().refusal("203.0.113.7")).toBeUndefined();
  });

  test("the executor's connection goes through the hook: refused, never connected; listed, it arrives", async () => {
    const before = connections;
    const url = `http://upstream.example:${port}/v1/x`;
    const guarded = new HttpExecutor({
      denyPrivateNetworks: true,
      lookup: answering("127.0.0.1"),
    });
    const listed = new HttpExecutor({
      denyPrivateNetworks: true,
      allowedHosts: ["upstream.example"],
      lookup: answering("127.0.0.1"),
    });
    try {
      const out = await guarded.execute(post(url));
      expect(out).toMatchObject({ kind: "failure", code: "network_error", retriable: false });
      expect(out.kind === "failure" && out.message).toMatch(
        /upstream\.example resolves to 127\.0\.0\.1, which is a loopback address.*\[FUSILLADE_ENDPOINT_DENIED\]/,
      );
      expect(connections).toBe(before);
      expect(await listed.execute(post(url))).toMatchObject({
        kind: "completion",
        statusCode: 200,
      });
      expect(connections).toBe(before + 1);
    } finally {
      await guarded.close();
      await listed.close();
    }
  });
});
