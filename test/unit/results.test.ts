/** Result lines in OpenAI's batch output/error formats (src/domain/results.ts). */
import { describe, expect, it } from "vitest";
import { compactJson, nestsDeeperThan } from "../../src/domain/json-text.js";
import {
  bodyJson,
  formatResultLine,
  MAX_RESULT_BODY_DEPTH,
  type ResultFacts,
  requestIdOf,
  resultKind,
  resultLine,
  resultLineId,
} from "../../src/domain/results.js";

const ID = "0b8f3c2e-4d5a-4b6c-8d7e-9f0a1b2c3d4e";
const bytes = (s: string) => new TextEncoder().encode(s);

function facts(over: Partial<ResultFacts>): ResultFacts {
  return {
    id: ID,
    customId: "req-1",
    state: "completed",
    responseStatus: null,
    responseHeaders: null,
    responseBody: null,
    errorCode: null,
    errorMessage: null,
    ...over,
  };
}

/** The line as a reader of the file sees it: kind, and the text parsed back. */
// biome-ignore lint/suspicious/noExplicitAny: the tests read the parsed line's fields as a reader of the file would, unchecked
function line(f: Partial<ResultFacts>): { kind: string; text: string; value: any } {
  const r = resultLine(facts(f));
  if (r === undefined) throw new Error("no line");
  const text = formatResultLine(r.line);
  return { kind: r.kind, text, value: JSON.parse(text) };
}

describe("resultLine", () => {
  it("makes an output line for a completed request, body as JSON, upstream request id", () => {
    const r = line({
      responseStatus: 200,
      responseHeaders: { "x-request-id": "req_abc", "content-type": "application/json" },
      responseBody: bytes('{"choices":[{"message":{"content":"hi"}}]}'),
    });
    expect(r.kind).toBe("output");
    expect(r.value).toEqual({
      id: "batch_req_0b8f3c2e4d5a4b6c8d7e9f0a1b2c3d4e",
      custom_id: "req-1",
      response: {
        status_code: 200,
        request_id: "req_abc",
        body: { choices: [{ message: { content: "hi" } }] },
      },
      error: null,
    });
    expect(Object.keys(r.value)).toEqual(["id", "custom_id", "response", "error"]);
    expect(Object.keys(r.value.response)).toEqual(["status_code", "request_id", "body"]);
  });

  it("keeps a body that is not JSON as text, and falls back to our request id", () => {
    const r = line({ responseStatus: 200, responseBody: bytes("plain text") });
    expect(r.value.response).toEqual({ status_code: 200, request_id: ID, body: "plain text" });
  });

  it("uses the request-id header when x-request-id is absent", () => {
    const r = line({
      responseStatus: 200,
      responseBody: bytes("{}"),
      responseHeaders: { "request-id": "r-9" },
    });
    expect(r.value.response.request_id).toBe("r-9");
  });

  it("makes an error line with the response for a failed request that got a status", () => {
    const r = line({
      state: "failed",
      responseStatus: 400,
      responseBody: bytes('{"error":{"message":"bad"}}'),
      errorCode: "http_error",
      errorMessage: "upstream answered 400",
    });
    expect(r.kind).toBe("error");
    expect(r.value).toEqual({
      id: resultLineId(ID),
      custom_id: "req-1",
      response: { status_code: 400, request_id: ID, body: { error: { message: "bad" } } },
      error: { code: "http_error", message: "upstream answered 400" },
    });
  });

  it("makes an error line with a null response for a failure without a status", () => {
    const r = line({ state: "failed", errorCode: "timeout", errorMessage: "no answer in 60s" });
    expect(r.value).toEqual({
      id: resultLineId(ID),
      custom_id: "req-1",
      response: null,
      error: { code: "timeout", message: "no answer in 60s" },
    });
  });

  it("gives expired and cancelled requests OpenAI's codes", () => {
    const expired = line({
      state: "expired",
      errorCode: "whatever",
      errorMessage: "window closed",
    });
    expect(expired.value.error).toEqual({ code: "batch_expired", message: "window closed" });
    expect(expired.value.response).toBeNull();
    const canceled = line({ state: "canceled", customId: null });
    expect(canceled.value.error.code).toBe("batch_cancelled");
    expect(canceled.value.error.message).toMatch(/cancelled/);
    expect(canceled.value.custom_id).toBeNull();
  });

  it("makes no line for a request still running", () => {
    expect(resultLine(facts({ state: "pending" }))).toBeUndefined();
    expect(resultLine(facts({ state: "leased" }))).toBeUndefined();
    expect(resultKind("leased")).toBeUndefined();
    expect(resultKind("completed")).toBe("output");
    expect(resultKind("expired")).toBe("error");
  });
});

describe("hostile bodies", () => {
  it("keeps JSON of any kind as JSON, and anything else as a string", () => {
    expect(JSON.parse(bodyJson(bytes("[1,2]")).json)).toEqual([1, 2]);
    expect(JSON.parse(bodyJson(bytes("42")).json)).toBe(42);
    expect(JSON.parse(bodyJson(bytes("")).json)).toBe("");
    expect(JSON.parse(bodyJson(bytes("<html>")).json)).toBe("<html>");
  });

  it("removes the whitespace of a pretty-printed body, not the whitespace in its strings", () => {
    const pretty = '{\n  "a": [ 1,\t2 ],\r\n  "s": "two  spaces \\" and\\n"\n}\n';
    const json = bodyJson(bytes(pretty)).json;
    expect(json).toBe('{"a":[1,2],"s":"two  spaces \\" and\\n"}');
    expect(JSON.parse(json)).toEqual(JSON.parse(pretty));
    const r = line({ responseStatus: 200, responseBody: bytes(pretty) });
    expect(r.text).not.toMatch(/[\r\n]/);
    expect(r.value.response.body).toEqual(JSON.parse(pretty));
  });

  it("keeps a body with a NUL byte as a string, the line intact", () => {
    const r = line({ responseStatus: 200, responseBody: bytes('{"a":"x\u0000y"') });
    expect(r.value.response.body).toBe('{"a":"x\u0000y"');
    expect(r.text).not.toContain("\u0000"); // escaped as \u0000 in the line
  });

  it("keeps bytes that are not UTF-8 as a string with U+FFFD", () => {
    const r = line({ responseStatus: 200, responseBody: new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]) });
    expect(r.value.response.body).toBe("{\uFFFD\uFFFD}");
  });

  it("keeps JSON nested deeper than readers parse as a string; the line still parses", () => {
    const deep = `${"[".repeat(20_000)}${"]".repeat(20_000)}`;
    const r = line({ responseStatus: 200, responseBody: bytes(deep) });
    expect(r.value.response.body).toBe(deep);
    const ok = `${"[".repeat(MAX_RESULT_BODY_DEPTH)}${"]".repeat(MAX_RESULT_BODY_DEPTH)}`;
    expect(typeof line({ responseStatus: 200, responseBody: bytes(ok) }).value.response.body).toBe(
      "object",
    );
  });

  it("ends a string at the quote after an even run of backslashes, not an odd one", () => {
    // Strings: a\ (an escaped backslash), b\" ] (a backslash, a quote, a bracket), c.
    const text = '[ "a\\\\" , "b\\\\\\" ]" ,\n "c" ]';
    expect(compactJson(text, 1)).toBe('["a\\\\","b\\\\\\" ]","c"]');
    expect(JSON.parse(compactJson(text, 1)!)).toEqual(JSON.parse(text));
  });

  it("counts depth outside strings only", () => {
    expect(compactJson('["[[[[", {"k": "{{{{"}]', 2)).toBe('["[[[[",{"k":"{{{{"}]');
    expect(compactJson("[[[]]]", 2)).toBeUndefined();
    expect(nestsDeeperThan('[{"a":"[[[["}]', 2)).toBe(false);
    expect(nestsDeeperThan("[[[]]]", 2)).toBe(true);
    // Objects and arrays count together; brackets in strings count for nothing.
    expect(nestsDeeperThan('[{"a":[{}]}]', 4)).toBe(false);
    expect(nestsDeeperThan('[{"a":[{}]}]', 3)).toBe(true);
    expect(nestsDeeperThan(`[${'"{{{{[[[["'.repeat(3)}]`, 2)).toBe(false);
    expect(nestsDeeperThan(`${"[".repeat(600)}${"]".repeat(600)}`, 513)).toBe(true);
    expect(nestsDeeperThan(`${"[{".repeat(256)}${"}]".repeat(256)}`, 512)).toBe(false);
  });
});

describe("requestIdOf", () => {
  it("turns a result line's id back into its request id, and leaves other ids alone", () => {
    const id = "3f34a1b2-0c4d-4e5f-8a6b-7c8d9e0f1a2b";
    expect(requestIdOf(resultLineId(id))).toBe(id);
    expect(requestIdOf(resultLineId(id).toUpperCase().replace("BATCH_REQ_", "batch_req_"))).toBe(
      id,
    );
    expect(requestIdOf(id)).toBe(id);
    expect(requestIdOf("batch_req_123")).toBe("batch_req_123");
  });
});
