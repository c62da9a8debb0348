/** The outbound allow-list (src/domain/endpoints.ts) and the dispatcher's DNS guard. */
import type dns from "node:dns";
import { describe, expect, test } from "vitest";
import {
  type EndpointPolicy,
  endpointRefusal,
  isLinkLocalAddress,
  parseAllowList,
} from "../../src/domain/endpoints.js";
import { guardedLookup, HttpExecutor } from "../../src/http/executor.js";

const shared: EndpointPolicy = {
  allow: undefined,
  denyPrivate: true,
  self: ["http://127.0.0.1:8080", "http://localhost:8080"],
};

describe("endpointRefusal", () => {
  test("a shared server refuses metadata and link-local addresses and itself, nothing else", () => {
    expect(endpointRefusal(shared, "http://169.254.169.254")).toMatch(/link-local/);
    expect(endpointRefusal(shared, "http://metadata.google.internal/computeMetadata")).toMatch(
      /metadata/,
    );
    expect(endpointRefusal(shared, "http://[fe80::1]:8080")).toMatch(/link-local/);
    expect(endpointRefusal(shared, "http://[::ffff:169.254.1.1]")).toMatch(/link-local/);
    expect(endpointRefusal(shared, "http://localhost:8080")).toMatch(/own address/);
    expect(endpointRefusal(shared, "http://127.0.0.1:9000")).toBeUndefined();
    expect(endpointRefusal(shared, "https://api.openai.com")).toBeUndefined();
  });

  test("local mode refuses nothing", () => {
    const open = { ...shared, denyPrivate: false };
    expect(endpointRefusal(open, "http://169.254.169.254")).toBeUndefined();
  });

  test("with a list, only listed origins pass; a listed metadata address passes", () => {
    const listed = {
      ...shared,
      allow: parseAllowList("https://*.example.com, http://169.254.169.254:80", "x"),
    };
    expect(endpointRefusal(listed, "https://api.example.com")).toBeUndefined();
    expect(endpointRefusal(listed, "https://example.com")).toMatch(/not in the server's allowed/);
    expect(endpointRefusal(listed, "https://api.example.com:8443")).toMatch(/not in/);
    expect(endpointRefusal(listed, "http://api.example.com")).toMatch(/not in/);
    expect(endpointRefusal(listed, "http://169.254.169.254")).toBeUndefined();
  });

  test("a malformed list names the setting", () => {
    expect(() =>
      parseAllowList("https://ok.example, ftp://x", "FUSILLADE_ALLOWED_ENDPOINTS"),
    ).toThrow(/FUSILLADE_ALLOWED_ENDPOINTS: "ftp:\/\/x"/);
  });

  test("link-local addresses, v4, v6 and mapped", () => {
    expect(isLinkLocalAddress("169.254.0.1")).toBe(true);
    expect(isLinkLocalAddress("fe80::abcd")).toBe(true);
    expect(isLinkLocalAddress("::ffff:169.254.9.9")).toBe(true);
    expect(isLinkLocalAddress("10.0.0.1")).toBe(false);
    expect(isLinkLocalAddress("fec0::1")).toBe(false);
  });
});

describe("the dispatcher's guard", () => {
  test("an address literal in the link-local range fails at once, not retriable", async () => {
    const ex = new HttpExecutor({ denyLinkLocal: true, connectTimeoutMs: 200 });
    const out = await ex.execute({
      method: "POST",
      url: "http://169.254.169.254/x",
      headers: [],
      body: "",
    });
    expect(out).toMatchObject({ kind: "failure", code: "network_error", retriable: false });
    expect(out.kind === "failure" && out.message).toMatch(/FUSILLADE_ENDPOINT_DENIED/);
    await ex.close();
  });

  test("a name that resolves into the range is refused after DNS; an allowed name is not", async () => {
    // A resolver answering what a hostile DNS record would.
    const base = ((_h: string, _o: unknown, cb: (...a: unknown[]) => void) =>
      cb(null, [{ address: "169.254.169.254", family: 4 }])) as unknown as typeof dns.lookup;
    const lookup = (allowed: string[], host: string) =>
      new Promise<{ err: NodeJS.ErrnoException | null; address?: unknown }>((resolve) =>
        guardedLookup(allowed, base)(host, { family: 0 }, (err, address) =>
          resolve({ err, address }),
        ),
      );
    const refused = await lookup([], "innocent.example");
    expect(refused.err?.code).toBe("FUSILLADE_ENDPOINT_DENIED");
    expect(refused.err?.message).toContain("innocent.example resolves to 169.254.169.254");
    const allowed = await lookup(["*.example"], "innocent.example");
    expect(allowed.err).toBeNull();
    expect(allowed.address).toBe("169.254.169.254");
  });
});
