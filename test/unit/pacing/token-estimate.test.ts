/** The token estimate of a request and the usage of a response. */
import { describe, expect, test } from "vitest";
import {
  DEFAULT_COMPLETION_TOKENS,
  estimateTokens,
  usageTokens,
} from "../../../src/dispatcher/pacing/token-estimate.js";

const body = (o: unknown) => JSON.stringify(o);

describe("estimateTokens", () => {
  test("chat: the messages' characters / 4 plus max_tokens or max_completion_tokens", () => {
    const messages = [
      { role: "system", content: "x".repeat(40) },
      { role: "user", content: [{ type: "text", text: "y".repeat(41) }] },
    ];
    expect(estimateTokens(body({ model: "m", messages, max_tokens: 100 }))).toBe(21 + 100);
    expect(estimateTokens(body({ model: "m", messages, max_completion_tokens: 7 }))).toBe(21 + 7);
  });

  test("no maximum set: the default completion (overridable)", () => {
    const b = body({ model: "m", messages: [{ role: "user", content: "abcd" }] });
    expect(estimateTokens(b)).toBe(1 + DEFAULT_COMPLETION_TOKENS);
    expect(estimateTokens(b, 16)).toBe(17);
  });

  test("completions: the prompt, a string or several", () => {
    expect(estimateTokens(body({ prompt: "abcdefgh", max_tokens: 2 }))).toBe(4);
    expect(estimateTokens(body({ prompt: ["abcd", "abcd"], max_tokens: 0 }))).toBe(2);
  });

  test("embeddings: the input only, as text or token ids", () => {
    expect(estimateTokens(body({ model: "e", input: "a".repeat(400) }))).toBe(100);
    expect(estimateTokens(body({ model: "e", input: ["abcd", "abcdabcd"] }))).toBe(3);
    expect(estimateTokens(body({ model: "e", input: [1, 2, 3, 4, 5] }))).toBe(5);
    expect(estimateTokens(body({ model: "e", input: [[1, 2], [3]] }))).toBe(3);
  });

  test("a body that is not a JSON object counts its characters", () => {
    expect(estimateTokens("not json at all!")).toBe(4);
    expect(estimateTokens("")).toBe(0);
  });
});

describe("usageTokens", () => {
  test("OpenAI's total, Anthropic's input + output, none", () => {
    expect(
      usageTokens(body({ usage: { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12 } })),
    ).toBe(12);
    expect(usageTokens(body({ usage: { input_tokens: 5, output_tokens: 9 } }))).toBe(14);
    expect(usageTokens(body({ usage: { prompt_tokens: 5 } }))).toBe(5);
    expect(usageTokens(body({ id: "x" }))).toBeUndefined();
    expect(usageTokens('{"usage": oops')).toBeUndefined();
  });
});
