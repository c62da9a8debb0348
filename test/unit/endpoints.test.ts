/** The outbound allow-list and the upload check (src/domain/endpoints.ts). */
import { describe, expect, test } from "vitest";
import {
  type EndpointPolicy,
  endpointRefusal,
  OPEN_POLICY,
  parseAllowList,
} from "../../src/domain/endpoints.js";
import { FORBIDDEN, PUBLIC } from "../helpers/forbidden-endpoints.js";

const shared: EndpointPolicy = { ...OPEN_POLICY, denyPrivate: true };

describe("endpointRefusal", () => {
  test.each(FORBIDDEN)("a server with tokens refuses %s", (endpoint, why) => {
    expect(endpointRefusal(shared, endpoint)).toMatch(why);
  });

  test.each(PUBLIC)("a server with tokens lets %s through", (endpoint) => {
    expect(endpointRefusal(shared, endpoint)).toBeUndefined();
  });

  test("the refusal names the origin as parsed and says how to allow it", () => {
    expect(endpointRefusal(shared, "http://0x7f.1:9")).toBe(
      "http://127.0.0.1:9: 127.0.0.1 is a loopback address; a server with tokens sends only to public addresses unless --allowed-endpoints lists the origin",
    );
  });

  test("local mode refuses nothing", () => {
    for (const [endpoint] of FORBIDDEN) {
      expect(endpointRefusal(OPEN_POLICY, endpoint)).toBeUndefined();
    }
  });

  test("with a list, only listed origins pass; listed private and metadata addresses pass", () => {
    const listed = {
      ...shared,
      allow: parseAllowList(
        "https://*.example.com, http://169.254.169.254:80, http://127.0.0.1:*",
        "x",
      ),
    };
    expect(endpointRefusal(listed, "https://api.example.com")).toBeUndefined();
    expect(endpointRefusal(listed, "https://example.com")).toMatch(/not in the server's allowed/);
    expect(endpointRefusal(listed, "https://api.example.com:8443")).toMatch(/not in/);
    expect(endpointRefusal(listed, "http://api.example.com")).toMatch(/not in/);
    expect(endpointRefusal(listed, "http://169.254.169.254")).toBeUndefined();
    expect(endpointRefusal(listed, "http://127.0.0.1:41234")).toBeUndefined();
    expect(endpointRefusal(listed, "http://2130706433:41234")).toBeUndefined();
    expect(endpointRefusal(listed, "http://127.0.0.2:41234")).toMatch(/not in/);
    expect(endpointRefusal(listed, "https://api.openai.com")).toMatch(/not in/);
  });

  test("listed addresses are canonical, as the endpoints they are matched against", () => {
    expect(parseAllowList("http://2130706433:*, http://[0:0::1]:8080", "x")).toEqual([
      { scheme: "http", host: "127.0.0.1", port: "*" },
      { scheme: "http", host: "[::1]", port: "8080" },
    ]);
  });

  test("a malformed list names the setting", () => {
    expect(() =>
      parseAllowList("https://ok.example, ftp://x", "FUSILLADE_ALLOWED_ENDPOINTS"),
    ).toThrow(/FUSILLADE_ALLOWED_ENDPOINTS: "ftp:\/\/x"/);
    expect(() => parseAllowList("http://999.1.1.1", "--allowed-endpoints")).toThrow(
      /--allowed-endpoints: "http:\/\/999.1.1.1" is not an origin/,
    );
  });
});
