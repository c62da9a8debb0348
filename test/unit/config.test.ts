import { describe, expect, it } from "vitest";
import {
  CONTROL_PLANE_DEFAULTS,
  ConfigError,
  controlPlaneConfig,
  parseCount,
  parseDurationSetting,
  parseListen,
} from "../../src/config/config.js";

/** The error `fn` throws, which must be a ConfigError. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error("expected a ConfigError, nothing was thrown");
}

describe("controlPlaneConfig", () => {
  it("reads the database pool, upload and page settings from the environment", () => {
    const c = controlPlaneConfig(
      {},
      {
        FUSILLADE_DB_POOL_SIZE: "30",
        FUSILLADE_DB_DISPATCH_POOL_SIZE: "5",
        FUSILLADE_DB_ACQUIRE_TIMEOUT: "2s",
        FUSILLADE_DB_STATEMENT_TIMEOUT: "0",
        FUSILLADE_LISTEN_CHECK_INTERVAL: "1s",
        FUSILLADE_MAX_UPLOAD_BYTES: "1000",
        FUSILLADE_MAX_UPLOAD_LINES: "10",
        FUSILLADE_MAX_PAGE_BYTES: "4096",
        FUSILLADE_STREAM_REAUTH_INTERVAL: "2s",
      },
    );
    expect(c).toMatchObject({
      dbPoolSize: 30,
      dbDispatchPoolSize: 5,
      dbAcquireTimeoutMs: 2000,
      dbStatementTimeoutMs: 0,
      listenCheckIntervalMs: 1000,
      maxUploadBytes: 1000,
      maxUploadLines: 10,
      maxPageBytes: 4096,
      streamReauthIntervalMs: 2000,
    });
    expect(controlPlaneConfig({}, {}).streamReauthIntervalMs).toBe(5000);
    expect(
      configError(() => controlPlaneConfig({}, { FUSILLADE_DB_POOL_SIZE: "0" })).message,
    ).toMatch(/FUSILLADE_DB_POOL_SIZE/);
    expect(
      configError(() => controlPlaneConfig({}, { FUSILLADE_LISTEN_CHECK_INTERVAL: "0" })).message,
    ).toMatch(/FUSILLADE_LISTEN_CHECK_INTERVAL/);
    expect(
      configError(() => controlPlaneConfig({}, { FUSILLADE_STREAM_REAUTH_INTERVAL: "0" })).message,
    ).toMatch(/FUSILLADE_STREAM_REAUTH_INTERVAL/);
    expect(
      configError(() => controlPlaneConfig({}, { FUSILLADE_DB_STATEMENT_TIMEOUT: "soon" })).message,
    ).toMatch(/FUSILLADE_DB_STATEMENT_TIMEOUT/);
  });

  it("reads the API port's connection caps and timeouts from the environment", () => {
    expect(controlPlaneConfig({}, {}).connections).toEqual(CONTROL_PLANE_DEFAULTS.connections);
    const c = controlPlaneConfig(
      {},
      {
        FUSILLADE_MAX_CONNECTIONS: "500",
        FUSILLADE_MAX_CONNECTIONS_PER_CLIENT: "50",
        FUSILLADE_HEADERS_TIMEOUT: "5s",
        FUSILLADE_IDLE_TIMEOUT: "0",
        FUSILLADE_BODY_TIMEOUT: "2m",
      },
    );
    expect(c.connections).toEqual({
      maxConnections: 500,
      maxConnectionsPerClient: 50,
      headersTimeoutMs: 5000,
      idleTimeoutMs: 0,
      bodyTimeoutMs: 120_000,
    });
    // A headers timeout of 0 would let a silent socket stay forever: refused.
    expect(
      configError(() => controlPlaneConfig({}, { FUSILLADE_HEADERS_TIMEOUT: "0" })).message,
    ).toMatch(/FUSILLADE_HEADERS_TIMEOUT/);
    expect(
      configError(() => controlPlaneConfig({}, { FUSILLADE_MAX_CONNECTIONS: "0x10" })).message,
    ).toMatch(/FUSILLADE_MAX_CONNECTIONS must be/);
    expect(
      configError(() => controlPlaneConfig({}, { FUSILLADE_BODY_TIMEOUT: "soon" })).message,
    ).toMatch(/FUSILLADE_BODY_TIMEOUT/);
  });

  it("reads FUSILLADE_FAIR_SHARE as on or off, and refuses anything else", () => {
    expect(controlPlaneConfig({}, {}).sharePolicy).toBe("fair");
    expect(controlPlaneConfig({}, { FUSILLADE_FAIR_SHARE: "off" }).sharePolicy).toBe("fifo");
    expect(controlPlaneConfig({}, { FUSILLADE_FAIR_SHARE: "on" }).sharePolicy).toBe("fair");
    expect(configError(() => controlPlaneConfig({}, { FUSILLADE_FAIR_SHARE: "yes" })).message).toBe(
      'FUSILLADE_FAIR_SHARE must be on or off, got "yes"',
    );
  });

  it("takes --listen and leaves every other default", () => {
    const c = controlPlaneConfig({ listen: "0.0.0.0:9000" }, {});
    expect(c).toEqual({ ...CONTROL_PLANE_DEFAULTS, host: "0.0.0.0", port: 9000 });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it("is the defaults with no flags and an empty environment", () => {
    expect(controlPlaneConfig({}, {})).toEqual(CONTROL_PLANE_DEFAULTS);
  });

  it("reads the environment, and flags win over it", () => {
    const env = {
      FUSILLADE_LISTEN: "10.0.0.1:7000",
      FUSILLADE_DATA_DIR: "/var/lib/f",
      DATABASE_URL: "postgres://u@db:5432/f",
      FUSILLADE_DEFAULT_LIMIT: "4",
      FUSILLADE_LEASE_TTL: "45s",
      FUSILLADE_LOG_LEVEL: "debug",
    };
    const fromEnv = controlPlaneConfig({}, env);
    expect(fromEnv).toMatchObject({
      host: "10.0.0.1",
      port: 7000,
      dataDir: "/var/lib/f",
      databaseUrl: "postgres://u@db:5432/f",
      defaultLimit: 4,
      leaseTtlMs: 45_000,
      logLevel: "debug",
    });
    const fromFlags = controlPlaneConfig(
      {
        listen: "[::1]:7001",
        dataDir: "./d",
        databaseUrl: "postgres://other/x",
        defaultLimit: "12",
        leaseTtl: "2m",
        logLevel: "warn",
      },
      env,
    );
    expect(fromFlags).toMatchObject({
      host: "::1",
      port: 7001,
      dataDir: "./d",
      databaseUrl: "postgres://other/x",
      defaultLimit: 12,
      leaseTtlMs: 120_000,
      logLevel: "warn",
    });
  });

  it("treats an empty DATABASE_URL as unset", () => {
    expect(controlPlaneConfig({}, { DATABASE_URL: "" }).databaseUrl).toBeUndefined();
  });

  it.each([
    [{ listen: "9000" }, {}, "--listen"],
    [{ listen: "" }, { FUSILLADE_LISTEN: "127.0.0.1:1" }, "--listen"],
    [{}, { FUSILLADE_LISTEN: "localhost:http" }, "FUSILLADE_LISTEN"],
    [{}, { FUSILLADE_LISTEN: "127.0.0.1:70000" }, "FUSILLADE_LISTEN"],
    [{ defaultLimit: "0" }, {}, "--default-limit"],
    [{ defaultLimit: "" }, {}, "--default-limit"],
    [{}, { FUSILLADE_DEFAULT_LIMIT: "ten" }, "FUSILLADE_DEFAULT_LIMIT"],
    [{}, { FUSILLADE_DEFAULT_LIMIT: "2.5" }, "FUSILLADE_DEFAULT_LIMIT"],
    [{}, { FUSILLADE_DEFAULT_LIMIT: "0x10" }, "FUSILLADE_DEFAULT_LIMIT"],
    [{}, { FUSILLADE_DEFAULT_LIMIT: "1e3" }, "FUSILLADE_DEFAULT_LIMIT"],
    [{}, { FUSILLADE_DEFAULT_LIMIT: "-1" }, "FUSILLADE_DEFAULT_LIMIT"],
    [{ leaseTtl: "30" }, {}, "--lease-ttl"],
    [{}, { FUSILLADE_LEASE_TTL: "soon" }, "FUSILLADE_LEASE_TTL"],
    [{}, { FUSILLADE_LEASE_TTL: "500ms" }, "FUSILLADE_LEASE_TTL"],
    [{ leaseTtl: "999ms" }, {}, "--lease-ttl"],
    [{ logLevel: "verbose" }, {}, "--log-level"],
    [{}, { FUSILLADE_LOG_LEVEL: "INFO" }, "FUSILLADE_LOG_LEVEL"],
    [{ retention: "a month" }, {}, "--retention"],
    [{}, { FUSILLADE_RETENTION: "30" }, "FUSILLADE_RETENTION"],
    [{}, { FUSILLADE_EVENT_RETENTION: "1 hour" }, "FUSILLADE_EVENT_RETENTION"],
  ])("rejects %j / %j naming %s", (flags, env, name) => {
    const e = configError(() => controlPlaneConfig(flags, env));
    expect(e.message).toContain(name);
  });

  it("keeps finished batches 30 days and their change log an hour unless told otherwise", () => {
    expect(controlPlaneConfig({}, {})).toMatchObject({
      retentionMs: 30 * 24 * 3600_000,
      eventRetentionMs: 3600_000,
    });
    const env = { FUSILLADE_RETENTION: "7d", FUSILLADE_EVENT_RETENTION: "0" };
    expect(controlPlaneConfig({}, env)).toMatchObject({ retentionMs: 7 * 24 * 3600_000 });
    expect(controlPlaneConfig({}, env).eventRetentionMs).toBe(0);
    // The flag wins; "10s" works (retention can be tried in seconds); "0" keeps everything.
    expect(controlPlaneConfig({ retention: "10s" }, env).retentionMs).toBe(10_000);
    expect(controlPlaneConfig({ retention: "0" }, env).retentionMs).toBe(0);
  });
});

describe("the setting parsers", () => {
  it("parseListen reads host:port, IPv6 in brackets, and an empty host as loopback", () => {
    expect(parseListen("0.0.0.0:9000", "x")).toEqual({ host: "0.0.0.0", port: 9000 });
    expect(parseListen("[::]:0", "x")).toEqual({ host: "::", port: 0 });
    expect(parseListen(":8080", "x")).toEqual({ host: "127.0.0.1", port: 8080 });
    expect(configError(() => parseListen("::1:80", "LISTEN")).message).toContain("LISTEN");
  });

  it("parseCount accepts digits only", () => {
    expect(parseCount("7", "N")).toBe(7);
    expect(parseCount("0", "N", true)).toBe(0);
    for (const bad of ["", " ", "0x1", "1e2", "1.0", "+3", "99999999999999999999"]) {
      expect(configError(() => parseCount(bad, "N", true)).message).toContain("N must be");
    }
  });

  it("parseDurationSetting names the setting", () => {
    expect(parseDurationSetting("1m30s", "T")).toBe(90_000);
    expect(configError(() => parseDurationSetting("90", "T")).message).toMatch(/^T must be/);
  });
});
