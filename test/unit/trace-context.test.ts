/** W3C trace context helpers and the bounded label values of the dispatcher's metrics. */
import { expect, test } from "vitest";
import {
  newSpanId,
  parseTraceparent,
  traceHeaders,
  traceIdOf,
  traceparent,
} from "../../src/http/trace-context.js";
import { retryCause, statusClass } from "../../src/metrics/dispatcher-metrics.js";

test("the trace id of a request is its UUID's hex digits; other ids are hashed", () => {
  expect(traceIdOf("0af76519-16cd-43dd-8448-eb211c80319c")).toBe(
    "0af7651916cd43dd8448eb211c80319c",
  );
  expect(traceIdOf("not-a-uuid")).toMatch(/^[0-9a-f]{32}$/);
  expect(traceIdOf("00000000-0000-0000-0000-000000000000")).not.toBe("0".repeat(32));
});

test("traceparent: version 00, sampled, a new span per call; parse takes only valid values", () => {
  const id = "4bf92f3577b34da6a3ce929d0e0e4736";
  const a = parseTraceparent(traceparent(id));
  const b = parseTraceparent(traceparent(id));
  expect(a).toMatchObject({ traceId: id, flags: "01" });
  expect(a!.spanId).not.toBe(b!.spanId);
  expect(newSpanId()).toMatch(/^[0-9a-f]{16}$/);
  for (const bad of [
    undefined,
    "",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    `00-${"0".repeat(32)}-00f067aa0ba902b7-01`,
    `00-4bf92f3577b34da6a3ce929d0e0e4736-${"0".repeat(16)}-01`,
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
  ]) {
    expect(parseTraceparent(bad), String(bad)).toBeUndefined();
  }
});

test("span ids come from a pool that is drawn anew: thousands in a row are all different", () => {
  const ids = Array.from({ length: 3000 }, () => newSpanId());
  expect(new Set(ids).size).toBe(ids.length);
  for (const id of ids) expect(id).toMatch(/^[0-9a-f]{16}$/);
});

test("an attempt's headers: traceparent in the request's trace, and the batch id", () => {
  const h = Object.fromEntries(traceHeaders("0af76519-16cd-43dd-8448-eb211c80319c", "b-1"));
  expect(parseTraceparent(h.traceparent)!.traceId).toBe("0af7651916cd43dd8448eb211c80319c");
  expect(h["x-fusillade-batch-id"]).toBe("b-1");
});

test("metric label values are bounded", () => {
  expect([200, 204, 404, 429, 503, 0, 999].map(statusClass)).toEqual([
    "2xx",
    "2xx",
    "4xx",
    "4xx",
    "5xx",
    "none",
    "none",
  ]);
  const f = (statusCode: number, code: "http_error" | "timeout" | "network_error") => ({
    kind: "failure" as const,
    statusCode,
    code,
    message: "",
    retriable: true,
    bodyExcerpt: new Uint8Array(0),
    headers: {},
  });
  expect(retryCause(f(429, "http_error"))).toBe("rate_limited");
  expect(retryCause(f(503, "http_error"))).toBe("server_error");
  expect(retryCause(f(408, "http_error"))).toBe("request_timeout");
  expect(retryCause(f(0, "timeout"))).toBe("timeout");
  expect(retryCause(f(0, "network_error"))).toBe("network_error");
});
