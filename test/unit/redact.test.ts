/**
 * Redaction of echoed secrets (src/http/redact.ts, docs/trust.md): an API key
 * an upstream writes back is "[redacted]" whatever its spelling — as sent,
 * JSON-escaped (`\/`, `\u002f`, nested JSON), in another letter case,
 * percent-encoded — in stored bodies, kept headers and messages; the bytes
 * around it are kept as they were.
 */
import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, expect, test } from "vitest";
import { HttpExecutor } from "../../src/http/executor.js";
import { bodyScrubber, headerScrubber } from "../../src/http/redact.js";

const KEY = "sk-Live/AbCd+EfGh/0123=";
const HEADERS: Array<[string, string]> = [
  ["content-type", "application/json"],
  ["authorization", `Bearer ${KEY}`],
  ["x-fusillade-request-id", "req-42-0123456789"],
];

const uEscaped = (s: string, upper = false) =>
  [...s]
    .map((c) => {
      const hex = c.charCodeAt(0).toString(16).padStart(4, "0");
      return `\\u${upper ? hex.toUpperCase() : hex}`;
    })
    .join("");

/** Each spelling as it stands inside a JSON string in a body: [name, raw JSON text]. */
const SPELLINGS: ReadonlyArray<readonly [string, string]> = [
  ["as sent", KEY],
  ["with / escaped as \\/", KEY.replaceAll("/", "\\/")],
  ["every character \\u-escaped", uEscaped(KEY)],
  ["\\u-escaped with upper-case hex", uEscaped(KEY, true)],
  ["only / as \\u002f", KEY.replaceAll("/", "\\u002f")],
  ["upper case", KEY.toUpperCase()],
  ["lower case", KEY.toLowerCase()],
  ["percent-encoded", encodeURIComponent(KEY)],
  ["percent-encoded, lower-case hex", encodeURIComponent(KEY).toLowerCase()],
  ["upper case and escaped", KEY.toUpperCase().replaceAll("/", "\\/")],
];

const text = (b: Uint8Array) => Buffer.from(b).toString("utf8");
const body = (raw: string) => Buffer.from(`{"echo":"${raw}","after":"kept"}`);

describe("bodyScrubber", () => {
  const scrub = bodyScrubber(HEADERS);

  test.each(SPELLINGS)("the key %s is redacted and the body stays valid JSON", (_name, raw) => {
    const out = JSON.parse(text(scrub(body(raw))));
    expect(out).toEqual({ echo: "[redacted]", after: "kept" });
  });

  test("JSON nested in a JSON string (escaped twice) is redacted", () => {
    const inner = JSON.stringify({ auth: `Bearer ${KEY}` }).replaceAll("/", "\\/");
    const twice = Buffer.from(JSON.stringify({ log: inner }));
    expect(twice.toString()).toContain("sk-Live\\\\/AbCd"); // `/` is `\\/` here
    const out = JSON.parse(text(scrub(twice)));
    expect(JSON.parse(out.log)).toEqual({ auth: "Bearer [redacted]" });
  });

  test("bytes that are not UTF-8 around a key come back unchanged", () => {
    const raw = Buffer.concat([
      Buffer.from([0xff, 0xfe, 0x00]),
      Buffer.from(KEY.toUpperCase()),
      Buffer.from([0x80, 0xc3]),
    ]);
    expect([...scrub(raw)]).toEqual([0xff, 0xfe, 0x00, ...Buffer.from("[redacted]"), 0x80, 0xc3]);
  });

  test("a body without the key is returned as is; ids and the scheme's word are no secrets", () => {
    const clean = Buffer.from('{"id":"req-42-0123456789","type":"Bearer","x":"sk-Live/AbCd"}');
    expect(scrub(clean)).toBe(clean);
  });

  test("a credential is redacted at any length; other short header values are not", () => {
    const short = bodyScrubber([
      ["authorization", "Bearer abc"],
      ["x-tenant", "acme"],
    ]);
    expect(text(short(Buffer.from('{"k":"ABC","t":"acme","s":"Bearer"}')))).toBe(
      '{"k":"[redacted]","t":"acme","s":"Bearer"}',
    );
  });
});

describe("headerScrubber (messages and kept headers)", () => {
  test.each(SPELLINGS)("the key %s is redacted", (_name, raw) => {
    expect(headerScrubber(HEADERS)(`upstream said: ${raw}.`)).toBe("upstream said: [redacted].");
  });
});

test("through the executor: an upstream echoing the key in every spelling stores none of them", async () => {
  const server = createServer((_req, res) => {
    res.setHeader("content-type", "application/json");
    res.setHeader("x-request-id", KEY.toLowerCase());
    res.end(`[${SPELLINGS.map(([, raw]) => `"${raw}"`).join(",")}]`);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/x`;
  const ex = new HttpExecutor();
  try {
    const out = await ex.execute({ method: "POST", url, headers: HEADERS, body: "{}" });
    expect(out.kind).toBe("completion");
    if (out.kind !== "completion") return;
    expect(JSON.parse(text(out.body))).toEqual(SPELLINGS.map(() => "[redacted]"));
    expect(out.headers["x-request-id"]).toBe("[redacted]");
  } finally {
    await ex.close();
    server.close();
  }
});
