import { describe, expect, it } from "vitest";
import { HOUR, MINUTE, parseDuration, SECOND } from "../../src/domain/duration.js";

describe("parseDuration", () => {
  it.each([
    ["24h", 24 * HOUR],
    ["90m", 90 * MINUTE],
    ["1h30m", HOUR + 30 * MINUTE],
    ["3600s", 3600 * SECOND],
    ["500ms", 500],
    ["1m500ms", MINUTE + 500],
    ["2d", 48 * HOUR],
    ["1.5h", 90 * MINUTE],
    ["0.5s", 500],
    ["  10s ", 10 * SECOND],
    ["0s", 0],
  ])("%j is %d ms", (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each([
    "",
    "   ",
    "24",
    "h",
    "24 h",
    "24H",
    "-5s",
    "+5s",
    "1h30",
    "1.h",
    ".5h",
    "1.5.5h",
    "5 s",
    "5sec",
    "1w",
    "1e3ms",
    "PT24H",
  ])("rejects %j", (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });

  it("rejects a duration too large to be exact (not Infinity)", () => {
    expect(parseDuration(`${"9".repeat(400)}d`)).toBeUndefined();
    expect(parseDuration(`${"9".repeat(20)}ms`)).toBeUndefined();
    expect(parseDuration("100000d")).toBe(100000 * 24 * HOUR);
  });
});
