/** The metered test upstream itself: its buckets, its 429s and headers, its random mode, its record. */
import { afterEach, describe, expect, test } from "vitest";
import { parseRateLimitHeaders } from "../../src/domain/rate-limit-headers.js";
import { type MeteredUpstream, maxIn, startMeteredUpstream } from "../helpers/metered-upstream.js";

let up: MeteredUpstream | undefined;
afterEach(async () => {
  await up?.close();
  up = undefined;
});

async function call(model: string, extra: Record<string, unknown> = {}) {
  const res = await fetch(`${up!.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], ...extra }),
  });
  const headers = Object.fromEntries(res.headers.entries());
  return { status: res.status, headers, body: (await res.json()) as Record<string, unknown> };
}

describe("metered upstream", () => {
  test("a request meter: one second's worth at once, then 429 with retry-after and x-ratelimit-*", async () => {
    up = await startMeteredUpstream({ meters: { m: { rpm: 600 } }, latencyMs: 5 });
    const answers = await Promise.all(Array.from({ length: 40 }, () => call("m")));
    const ok = answers.filter((a) => a.status === 200);
    const limited = answers.filter((a) => a.status === 429);
    // 10 a second of burst, and what refilled (10/s) while the calls arrived.
    const at = up.record("m").accepted;
    expect(ok.length).toBeGreaterThanOrEqual(10);
    expect(ok.length).toBeLessThanOrEqual(10 + Math.floor(((at.at(-1)! - at[0]!) * 10) / 1000));
    expect(limited.length).toBe(40 - ok.length);
    const h = limited[0]!.headers;
    expect(h["retry-after"]).toBe("1");
    const meter = parseRateLimitHeaders(h, Date.now());
    expect(meter.requests?.remaining).toBe(0);
    expect(meter.requests?.resetMs).toBeGreaterThan(0);
    expect(meter.requests?.resetMs).toBeLessThanOrEqual(100);
    expect(ok[0]!.body.usage).toMatchObject({ total_tokens: expect.any(Number) });
    expect(up.record("m")).toMatchObject({ calls: 40, metered: limited.length });
    expect(up.maxInWindow("m", 1000)).toBe(ok.length);
  });

  test("a token meter refuses what the tokens bucket cannot pay for, with the tokens headers", async () => {
    // 6,000 tokens a minute: 100 a second. Each call: ~9 prompt + 60 completion tokens.
    up = await startMeteredUpstream({ meters: { t: { tpm: 6000 } }, completionTokens: 60 });
    const first = await call("t");
    expect(first.status).toBe(200);
    const second = await call("t");
    expect(second.status).toBe(429);
    expect(Number(second.headers["x-ratelimit-remaining-tokens"])).toBeLessThan(60);
    expect(second.headers["x-ratelimit-remaining-requests"]).toBeUndefined();
    // max_tokens caps the completion it writes: a small call still fits.
    expect((await call("t", { max_tokens: 1 })).status).toBe(200);
    expect(up.maxTokensInWindow("t", 60_000)).toBeLessThanOrEqual(100 + 5);
  });

  test("random mode: 429 with retry-after and no meter reading, whatever the buckets hold", async () => {
    up = await startMeteredUpstream({ randomThrottle: 0.5, randomRetryAfterS: 2, seed: 7 });
    const answers = [];
    for (let i = 0; i < 40; i++) answers.push(await call("r"));
    const limited = answers.filter((a) => a.status === 429);
    expect(limited.length).toBeGreaterThan(10);
    expect(limited.length).toBeLessThan(30);
    expect(limited[0]!.headers["retry-after"]).toBe("2");
    expect(limited[0]!.headers["x-ratelimit-remaining-requests"]).toBeUndefined();
    expect(up.record("r").random).toBe(limited.length);
  });

  test("maxIn counts the busiest half-open window", () => {
    expect(maxIn([0, 100, 999, 1000, 1500, 1999], 1000)).toBe(3);
    expect(maxIn([0, 100, 999, 1000, 1500, 1998], 1000)).toBe(4);
    expect(maxIn([], 1000)).toBe(0);
  });
});
