/** Result lines in OpenAI's batch output/error formats (src/domain/results.ts). */
import { describe, expect, it } from "vitest";
import {
  parseBody,
  type ResultFacts,
  resultKind,
  resultLine,
  resultLineId,
} from "../../src/domain/results.js";

const ID = "0b8f3c2e-4d5a-4b6c-8d7e-9f0a1b2c3d4e";

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

describe("resultLine", () => {
  it("makes an output line for a completed request, body parsed, upstream request id", () => {
    const r = resultLine(
      facts({
        responseStatus: 200,
        responseHeaders: { "x-request-id": "req_abc", "content-type": "application/json" },
        responseBody: '{"choices":[{"message":{"content":"hi"}}]}',
      }),
    );
    expect(r).toEqual({
      kind: "output",
      line: {
        id: "batch_req_0b8f3c2e4d5a4b6c8d7e9f0a1b2c3d4e",
        custom_id: "req-1",
        response: {
          status_code: 200,
          request_id: "req_abc",
          body: { choices: [{ message: { content: "hi" } }] },
        },
        error: null,
      },
    });
    expect(Object.keys(r!.line)).toEqual(["id", "custom_id", "response", "error"]);
    expect(Object.keys(r!.line.response!)).toEqual(["status_code", "request_id", "body"]);
  });

  it("keeps a body that is not JSON as text, and falls back to our request id", () => {
    const r = resultLine(facts({ responseStatus: 200, responseBody: "plain text" }));
    expect(r!.line.response).toEqual({ status_code: 200, request_id: ID, body: "plain text" });
  });

  it("uses the request-id header when x-request-id is absent", () => {
    const r = resultLine(
      facts({ responseStatus: 200, responseBody: "{}", responseHeaders: { "request-id": "r-9" } }),
    );
    expect(r!.line.response!.request_id).toBe("r-9");
  });

  it("makes an error line with the response for a failed request that got a status", () => {
    const r = resultLine(
      facts({
        state: "failed",
        responseStatus: 400,
        responseBody: '{"error":{"message":"bad"}}',
        errorCode: "http_error",
        errorMessage: "upstream answered 400",
      }),
    );
    expect(r).toEqual({
      kind: "error",
      line: {
        id: resultLineId(ID),
        custom_id: "req-1",
        response: { status_code: 400, request_id: ID, body: { error: { message: "bad" } } },
        error: { code: "http_error", message: "upstream answered 400" },
      },
    });
  });

  it("makes an error line with a null response for a failure without a status", () => {
    const r = resultLine(
      facts({ state: "failed", errorCode: "timeout", errorMessage: "no answer in 60s" }),
    );
    expect(r!.line).toEqual({
      id: resultLineId(ID),
      custom_id: "req-1",
      response: null,
      error: { code: "timeout", message: "no answer in 60s" },
    });
  });

  it("gives expired and cancelled requests OpenAI's codes", () => {
    const expired = resultLine(
      facts({ state: "expired", errorCode: "whatever", errorMessage: "window closed" }),
    );
    expect(expired!.line.error).toEqual({ code: "batch_expired", message: "window closed" });
    expect(expired!.line.response).toBeNull();
    const canceled = resultLine(facts({ state: "canceled", customId: null }));
    expect(canceled!.line.error!.code).toBe("batch_cancelled");
    expect(canceled!.line.error!.message).toMatch(/cancelled/);
    expect(canceled!.line.custom_id).toBeNull();
  });

  it("makes no line for a request still running", () => {
    expect(resultLine(facts({ state: "pending" }))).toBeUndefined();
    expect(resultLine(facts({ state: "leased" }))).toBeUndefined();
    expect(resultKind("leased")).toBeUndefined();
    expect(resultKind("completed")).toBe("output");
    expect(resultKind("expired")).toBe("error");
  });

  it("parses JSON bodies of any kind and keeps anything else", () => {
    expect(parseBody("[1,2]")).toEqual([1, 2]);
    expect(parseBody("42")).toBe(42);
    expect(parseBody("")).toBe("");
    expect(parseBody("<html>")).toBe("<html>");
  });
});
