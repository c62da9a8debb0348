import { describe, expect, it } from "vitest";
import { doubledPrefix } from "../../src/cli/client/preflight.js";
import {
  errorsText,
  etaSeconds,
  fitLine,
  type LineParts,
  plainParts,
  sharesText,
} from "../../src/cli/client/progress-line.js";
import { runView } from "../../src/cli/client/views.js";

const counts = (over: Partial<LineParts["counts"]> = {}): LineParts["counts"] => ({
  total: 2000,
  pending: 1200,
  in_progress: 10,
  completed: 780,
  failed: 10,
  canceled: 0,
  expired: 0,
  ...over,
});

const bar = (size: number) => "#".repeat(size);
const run = { running: 8, queued: 1202 };

describe("etaSeconds", () => {
  it("follows the slowest model, not the overall rate", () => {
    // gpt-fast is done (it made the overall rate 20/s); gpt-slow has 1000 left at 5/s.
    const eta = etaSeconds(1000, 20, [
      { model: "gpt-fast", remaining: 0, rate: 15 },
      { model: "gpt-slow", remaining: 1000, rate: 5 },
    ]);
    expect(eta).toBe(200);
    // The overall rate alone said 50 s: 4× too low.
    expect(etaSeconds(1000, 20, [])).toBe(50);
  });

  it("takes the longest of the models with work left", () => {
    const eta = etaSeconds(900, 30, [
      { model: "a", remaining: 600, rate: 20 },
      { model: "b", remaining: 300, rate: 5 },
    ]);
    expect(eta).toBe(60);
  });

  it("falls back to the overall rate while a model has no rate yet, and says nothing without one", () => {
    expect(etaSeconds(100, 10, [{ model: "a", remaining: 100, rate: undefined }])).toBe(10);
    expect(etaSeconds(100, undefined, [])).toBeUndefined();
    expect(etaSeconds(0, undefined, [])).toBe(0);
  });
});

describe("fitLine", () => {
  const parts: LineParts = {
    counts: counts(),
    run,
    rate: 12.5,
    eta: 95,
    errors: errorsText(
      [
        { code: "http_error", statusCode: 404, failed: 10, retrying: 0 },
        { code: "network_error", statusCode: 0, failed: 0, retrying: 3 },
      ],
      10,
    ),
    holds: "",
  };

  it("keeps the rate and the ETA in 80 columns", () => {
    const line = fitLine(parts, 79, bar);
    expect(line.length).toBeLessThanOrEqual(78);
    expect(line).toContain("ETA 1m35s");
    expect(line).toContain("req/s");
    expect(line).toContain("790/2000");
  });

  it("shows everything when there is room", () => {
    const line = fitLine(parts, 300, bar);
    expect(line).toContain("ok 780 · failed 10");
    expect(line).toContain("errors: http_error 404 ×10, network_error ×3 retrying");
    expect(line).toContain("#".repeat(30));
  });

  it("drops the per-state counts before the errors, and keeps the ETA to the last", () => {
    const line = fitLine(parts, 130, bar);
    expect(line).toContain("errors:");
    expect(line).not.toContain("ok 780");
    const narrow = fitLine(parts, 40, bar);
    expect(narrow.length).toBeLessThanOrEqual(39);
    expect(narrow).toContain("ETA 1m35s");
  });

  it("plain lines carry the errors and holds", () => {
    const plain = plainParts({ ...parts, holds: "gpt-a held until 12:00:00 (429)" }).join(" | ");
    expect(plain).toMatch(
      /ETA 1m35s \| gpt-a held until 12:00:00 \(429\) \| errors: http_error 404/,
    );
  });
});

describe("errorsText", () => {
  it('adds up to the failed count: kinds left out are "other"', () => {
    const errors = [
      { code: "http_error", statusCode: 429, failed: 8, retrying: 0 },
      { code: "http_error", statusCode: 500, failed: 3, retrying: 1 },
      { code: "timeout", statusCode: 0, failed: 2, retrying: 0 },
    ];
    expect(errorsText(errors, 13)).toBe(
      "http_error 429 ×8, http_error 500 ×3 failed, ×1 retrying, timeout ×2",
    );
    expect(errorsText(errors, 14, 2)).toBe(
      "http_error 429 ×8, http_error 500 ×3 failed, ×1 retrying, other ×3",
    );
    expect(errorsText([], 0)).toBe("");
  });
});

describe("sharesText", () => {
  const share = (model: string, running: number, batches: number) => ({
    model,
    running,
    model_running: 8,
    limit: 8,
    in_flight: running + 4,
    model_in_flight: 12,
    active_batches: batches,
    pacing: null,
  });

  it("says per model what runs against its limit, this batch's part and the batches sharing it", () => {
    expect(sharesText([share("gpt-a", 4, 2), share("gpt-b", 8, 1)])).toBe(
      "gpt-a 8/8 running (this batch 4, 2 batches), gpt-b 8/8 running (1 batch)",
    );
    expect(sharesText([])).toBe("");
  });

  it("says why a paced or backing-off model runs below its limit; nothing for a free one", () => {
    const paced = (mode: string, calls: number, throttled: number) => ({
      ...share("gpt-p", 3, 1),
      model_running: 3,
      limit: 500,
      pacing: {
        mode,
        concurrency: 3,
        calls_last_minute: calls,
        throttled_last_minute: throttled,
        window_seconds: 60,
        running: 3,
        dispatchers: 1,
      },
    });
    expect(sharesText([paced("paced", 2950, 0)])).toBe(
      "gpt-p 3/500 running (1 batch) · paced: 2,950/min, 0 % 429, 3 at once",
    );
    expect(sharesText([paced("backing_off", 1180, 142)])).toBe(
      "gpt-p 3/500 running (1 batch) · backing off: 1,180/min, 12 % 429, 3 at once",
    );
    expect(sharesText([paced("held", 10, 10)])).toBe(
      "gpt-p 3/500 running (1 batch) · held (meter empty)",
    );
    expect(sharesText([paced("free", 100, 0)])).toBe("gpt-p 3/500 running (1 batch)");
    // Ten seconds into a model's first minute: its counts are over ten seconds, not sixty.
    const early = paced("paced", 50, 0);
    early.pacing.window_seconds = 10;
    expect(sharesText([early])).toBe(
      "gpt-p 3/500 running (1 batch) · paced: 300/min, 0 % 429, 3 at once",
    );
  });

  it("is the first part a narrow terminal drops, and the last part of a plain line", () => {
    const parts: LineParts = {
      counts: counts(),
      run,
      rate: 12.5,
      eta: 95,
      errors: "",
      holds: "",
      shares: sharesText([share("gpt-a", 4, 2)]),
    };
    expect(fitLine(parts, 300, bar)).toMatch(/running 8 · queued 1202 \| gpt-a 8\/8 running/);
    const narrower = fitLine(parts, 110, bar);
    expect(narrower).not.toContain("8/8");
    expect(narrower).toContain("ok 780");
    expect(plainParts(parts).at(-1)).toBe("gpt-a 8/8 running (this batch 4, 2 batches)");
  });
});

describe("runView", () => {
  it("counts claims beyond the running ones as queued, with the pending", () => {
    const c = counts({ pending: 20, in_progress: 15 });
    expect(runView(c, [share(10)])).toEqual({ running: 10, queued: 25 });
    // No shares (a finished batch, an older server): its claims run.
    expect(runView(c, [])).toEqual({ running: 15, queued: 20 });
  });
  const share = (running: number) => ({
    model: "m",
    running,
    model_running: running,
    limit: 10,
    in_flight: 15,
    model_in_flight: 15,
    active_batches: 1,
    pacing: null,
  });
});

describe("doubledPrefix", () => {
  it("catches an endpoint that repeats the urls' /v1", () => {
    expect(doubledPrefix("https://api.example.com/v1", ["/v1/chat/completions"])).toMatch(
      /requests would go to https:\/\/api\.example\.com\/v1\/v1\/chat\/completions.*--endpoint https:\/\/api\.example\.com$/,
    );
    expect(doubledPrefix("https://api.example.com/v1/", ["/v1/embeddings"])).toBeDefined();
  });

  it("lets a proper pair through", () => {
    expect(doubledPrefix("https://api.example.com", ["/v1/chat/completions"])).toBeUndefined();
    expect(doubledPrefix("https://gw.example.com/openai", ["/v1/chat"])).toBeUndefined();
    expect(doubledPrefix("https://gw.example.com/v1x", ["/v1/chat"])).toBeUndefined();
  });
});
