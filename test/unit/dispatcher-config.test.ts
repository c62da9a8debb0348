import { describe, expect, test } from "vitest";
import { ConfigError } from "../../src/config/config.js";
import {
  DISPATCHER_DEFAULTS,
  dispatcherConfig,
  resolveDispatcherConfig,
} from "../../src/config/dispatcher-config.js";

const URL_ = "http://127.0.0.1:8080";

describe("dispatcherConfig", () => {
  test("defaults, with the URL from the environment", () => {
    const c = dispatcherConfig({}, { FUSILLADE_CONTROL_PLANE: URL_ });
    expect(c).toMatchObject({ ...DISPATCHER_DEFAULTS, controlPlaneUrl: URL_ });
    expect(c.id).toMatch(/.+-\d+-[0-9a-f]{4}$/);
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.models)).toBe(true);
  });

  test("the environment, and flags over it", () => {
    const env = {
      FUSILLADE_CONTROL_PLANE: "http://cp:1",
      FUSILLADE_CAPACITY: "7",
      FUSILLADE_MODELS: "a, b,,a",
      FUSILLADE_DISPATCHER_ID: "from-env",
      FUSILLADE_RENEW_INTERVAL: "2s",
      FUSILLADE_FENCE_MARGIN: "0s",
      FUSILLADE_SHUTDOWN_GRACE: "1m",
    };
    expect(dispatcherConfig({}, env)).toMatchObject({
      controlPlaneUrl: "http://cp:1",
      capacity: 7,
      models: ["a", "b"],
      id: "from-env",
      renewIntervalMs: 2000,
      fenceMarginMs: 0,
      shutdownGraceMs: 60_000,
    });
    expect(
      dispatcherConfig(
        { controlPlane: URL_, capacity: "3", models: "x", id: "flag", acquireWait: "500ms" },
        env,
      ),
    ).toMatchObject({
      controlPlaneUrl: URL_,
      capacity: 3,
      models: ["x"],
      id: "flag",
      acquireWaitMs: 500,
    });
  });

  test("errors name the flag or the variable", () => {
    expect(() => dispatcherConfig({}, {})).toThrow(
      /--control-plane URL or FUSILLADE_CONTROL_PLANE/,
    );
    expect(() => dispatcherConfig({ capacity: "0" }, { FUSILLADE_CONTROL_PLANE: URL_ })).toThrow(
      /--capacity/,
    );
    expect(() =>
      dispatcherConfig({}, { FUSILLADE_CONTROL_PLANE: URL_, FUSILLADE_CAPACITY: "many" }),
    ).toThrow(/FUSILLADE_CAPACITY/);
    expect(() => dispatcherConfig({ controlPlane: URL_, renewInterval: "soon" }, {})).toThrow(
      /--renew-interval/,
    );
    expect(() => dispatcherConfig({ controlPlane: URL_, acquireWait: "0s" }, {})).toThrow(
      /--acquire-wait/,
    );
    expect(() => dispatcherConfig({ controlPlane: "ftp://x" }, {})).toThrow(ConfigError);
    expect(() => dispatcherConfig({ controlPlane: "not a url" }, {})).toThrow(
      /--control-plane must be a URL/,
    );
    expect(() => resolveDispatcherConfig({ controlPlaneUrl: "x" })).toThrow(/controlPlaneUrl/);
    expect(() =>
      dispatcherConfig({}, { FUSILLADE_CONTROL_PLANE: URL_, FUSILLADE_LOG_LEVEL: "loud" }),
    ).toThrow(/FUSILLADE_LOG_LEVEL/);
  });
});

describe("the outbound policy's settings (docs/trust.md)", () => {
  test("a token turns it on, none leaves it off", () => {
    const env = { FUSILLADE_CONTROL_PLANE: URL_ };
    expect(dispatcherConfig({}, env).denyPrivateNetworks).toBe(false);
    expect(dispatcherConfig({ token: "fus_x" }, env).denyPrivateNetworks).toBe(true);
    expect(dispatcherConfig({}, { ...env, FUSILLADE_TOKEN: "fus_x" }).denyPrivateNetworks).toBe(
      true,
    );
  });

  test("--allowed-endpoints (over FUSILLADE_ALLOWED_ENDPOINTS) gives the exempt hosts, canonical", () => {
    const env = {
      FUSILLADE_CONTROL_PLANE: URL_,
      FUSILLADE_ALLOWED_ENDPOINTS: "https://*.internal.example, http://[0:0::1]:8000",
    };
    expect(dispatcherConfig({}, env).allowedHosts).toEqual(["*.internal.example", "::1"]);
    expect(dispatcherConfig({ allowedEndpoints: "http://2130706433:*" }, env).allowedHosts).toEqual(
      ["127.0.0.1"],
    );
    expect(() => dispatcherConfig({ allowedEndpoints: "ftp://x" }, env)).toThrow(
      /--allowed-endpoints: "ftp:\/\/x" is not an origin/,
    );
  });
});

describe("resolveDispatcherConfig", () => {
  test("validates every field", () => {
    expect(() => resolveDispatcherConfig({ controlPlaneUrl: URL_, capacity: 1.5 })).toThrow(
      /capacity/,
    );
    expect(() => resolveDispatcherConfig({ controlPlaneUrl: URL_, reportLingerMs: -1 })).toThrow(
      /reportLingerMs/,
    );
    expect(() => resolveDispatcherConfig({ controlPlaneUrl: URL_, renewIntervalMs: 0 })).toThrow(
      /renewIntervalMs/,
    );
    expect(() => resolveDispatcherConfig({ controlPlaneUrl: URL_, id: " " })).toThrow(/id/);
    expect(() => resolveDispatcherConfig({ controlPlaneUrl: URL_, logLevel: "loud" })).toThrow(
      /logLevel/,
    );
  });

  test("undefined options take the defaults", () => {
    const c = resolveDispatcherConfig({ controlPlaneUrl: URL_, capacity: undefined, id: "x" });
    expect(c.capacity).toBe(DISPATCHER_DEFAULTS.capacity);
  });
});
