import { describe, expect, it } from "vitest";
import {
  type BatchFacts,
  batchState,
  canTransition,
  isBatchTerminal,
  openAiStatus,
  REQUEST_STATES,
  REQUEST_TRANSITIONS,
  TERMINAL_REQUEST_STATES,
} from "../../src/domain/states.js";

const T0 = new Date("2025-03-01T00:00:00Z");
const at = (minutes: number) => new Date(T0.getTime() + minutes * 60_000);
const EXPIRES = at(60);

function facts(f: Partial<BatchFacts>): BatchFacts {
  return { cancellingAt: null, finishedAt: null, expiresAt: EXPIRES, expiredCount: 0, ...f };
}

describe("batchState", () => {
  it("is in_progress while requests remain and no cancel was asked", () => {
    expect(batchState(facts({}))).toBe("in_progress");
    // Past the window but not yet reaped: still in progress.
    expect(batchState(facts({ expiresAt: at(-1) }))).toBe("in_progress");
  });

  it("is cancelling once cancel was asked and requests remain", () => {
    expect(batchState(facts({ cancellingAt: at(5) }))).toBe("cancelling");
  });

  it("is cancelled once cancel was asked and every request is terminal", () => {
    expect(batchState(facts({ cancellingAt: at(5), finishedAt: at(6) }))).toBe("cancelled");
    // Cancel wins over expiry when both happened.
    expect(batchState(facts({ cancellingAt: at(5), finishedAt: at(70), expiredCount: 3 }))).toBe(
      "cancelled",
    );
  });

  it("is completed when every request is terminal and none expired", () => {
    expect(batchState(facts({ finishedAt: at(10) }))).toBe("completed");
    // Finished after the window closed, but nothing expired: completed.
    expect(batchState(facts({ finishedAt: at(70) }))).toBe("completed");
  });

  it("is expired when the window closed with requests expired", () => {
    expect(batchState(facts({ finishedAt: at(60), expiredCount: 1 }))).toBe("expired");
    expect(batchState(facts({ finishedAt: at(61), expiredCount: 5 }))).toBe("expired");
  });

  it("is completed when it finished inside its window, even with expired requests (after a partial retry moved the window)", () => {
    expect(batchState(facts({ finishedAt: at(30), expiredCount: 2 }))).toBe("completed");
  });

  it("knows which states are terminal and names them as OpenAI does", () => {
    expect(isBatchTerminal("in_progress")).toBe(false);
    expect(isBatchTerminal("cancelling")).toBe(false);
    expect(isBatchTerminal("completed")).toBe(true);
    expect(isBatchTerminal("cancelled")).toBe(true);
    expect(isBatchTerminal("expired")).toBe(true);
    for (const s of ["in_progress", "completed", "cancelling", "cancelled", "expired"] as const) {
      expect(openAiStatus(s)).toBe(s);
    }
  });
});

describe("request transitions", () => {
  it("lets nothing leave completed, and canceled only back to pending", () => {
    for (const to of REQUEST_STATES) {
      expect(canTransition("completed", to)).toBe(false);
      expect(canTransition("canceled", to)).toBe(to === "pending");
    }
  });

  it("sends failed, expired and (resume) canceled back to pending among terminal states (RetryBatch)", () => {
    for (const from of TERMINAL_REQUEST_STATES) {
      expect(canTransition(from, "pending")).toBe(from !== "completed");
    }
  });

  it("reaches a terminal state only from leased, except cancel and expiry of pending work", () => {
    expect(canTransition("pending", "completed")).toBe(false);
    expect(canTransition("pending", "failed")).toBe(false);
    expect(canTransition("pending", "canceled")).toBe(true);
    expect(canTransition("pending", "expired")).toBe(true);
    for (const to of ["completed", "failed", "canceled", "expired", "pending"] as const) {
      expect(canTransition("leased", to)).toBe(true);
    }
  });

  it("lists every state, with no self-transitions", () => {
    expect(Object.keys(REQUEST_TRANSITIONS).sort()).toEqual([...REQUEST_STATES].sort());
    for (const s of REQUEST_STATES) expect(canTransition(s, s)).toBe(false);
  });
});
