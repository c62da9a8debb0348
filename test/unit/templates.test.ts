import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "../../src/domain/errors.js";
import {
  MAX_CUSTOM_ID_LENGTH,
  MAX_LINE_BYTES,
  parseJsonlLine,
  splitLines,
  type TemplateInput,
  validateEndpoint,
  validateTemplate,
} from "../../src/domain/templates.js";

const enc = new TextEncoder();

/** Runs `fn` and returns what it threw (failing the test when it did not throw). */
function thrown(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidArgumentError);
    return e as InvalidArgumentError;
  }
  throw new Error("expected an InvalidArgumentError, nothing was thrown");
}

async function thrownAsync(p: Promise<unknown>): Promise<InvalidArgumentError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(InvalidArgumentError);
  return e as InvalidArgumentError;
}

async function* chunksOf(...parts: (string | Uint8Array)[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) yield typeof p === "string" ? enc.encode(p) : p;
}

async function lines(chunks: AsyncIterable<Uint8Array>) {
  const out: { line: number; text: string }[] = [];
  for await (const l of splitLines(chunks)) out.push(l);
  return out;
}

describe("parseJsonlLine", () => {
  const base = "https://api.example.com";

  it("reads an OpenAI batch line", () => {
    const row = parseJsonlLine(
      JSON.stringify({
        custom_id: "r-1",
        method: "post",
        url: "/v1/chat/completions",
        body: { model: "gpt-x", messages: [{ role: "user", content: "hé" }] },
      }),
      7,
      base,
      "sk-1",
    );
    expect(row).toEqual({
      line: 7,
      customId: "r-1",
      endpoint: base,
      method: "POST",
      path: "/v1/chat/completions",
      body: JSON.stringify({ model: "gpt-x", messages: [{ role: "user", content: "hé" }] }),
      model: "gpt-x",
      apiKey: "sk-1",
    });
  });

  it.each([
    ["no custom_id", '{"method":"POST","url":"/v1/x","body":{"model":"m"}}', "custom_id"],
    [
      "an empty custom_id",
      '{"custom_id":"","method":"POST","url":"/v1/x","body":{"model":"m"}}',
      "custom_id",
    ],
    [
      "a null custom_id",
      '{"custom_id":null,"method":"POST","url":"/v1/x","body":{"model":"m"}}',
      "custom_id",
    ],
    ["no method", '{"custom_id":"a","url":"/v1/x","body":{"model":"m"}}', "method"],
  ])("refuses a line with %s (OpenAI's format requires it)", (_name, text, field) => {
    const e = thrown(() => parseJsonlLine(text, 4, base, null));
    expect(e.field).toBe(field);
    expect(e.message).toMatch(new RegExp(`^line 4: ${field}: is required`));
  });

  it.each([
    ["not JSON", "{nope", "jsonl"],
    ["an array", "[1,2]", "jsonl"],
    ["a string", '"x"', "jsonl"],
    ["no body", '{"custom_id":"x","method":"POST","url":"/v1/x"}', "body"],
    ["a string body", '{"custom_id":"x","method":"POST","url":"/v1/x","body":"{}"}', "body"],
    [
      "no body.model",
      '{"custom_id":"x","method":"POST","url":"/v1/x","body":{"prompt":"hi"}}',
      "body.model",
    ],
    [
      "an empty body.model",
      '{"custom_id":"x","method":"POST","url":"/v1/x","body":{"model":""}}',
      "body.model",
    ],
    [
      "a numeric body.model",
      '{"custom_id":"x","method":"POST","url":"/v1/x","body":{"model":3}}',
      "body.model",
    ],
    ["no url", '{"custom_id":"x","method":"POST","body":{"model":"m"}}', "url"],
    [
      "an absolute url",
      '{"custom_id":"x","method":"POST","url":"https://evil.example/v1","body":{"model":"m"}}',
      "url",
    ],
    [
      "a relative url",
      '{"custom_id":"x","method":"POST","url":"v1/x","body":{"model":"m"}}',
      "url",
    ],
    ["a numeric url", '{"custom_id":"x","method":"POST","url":5,"body":{"model":"m"}}', "url"],
    [
      "a bad method",
      '{"custom_id":"x","method":"TRACE","url":"/v1/x","body":{"model":"m"}}',
      "method",
    ],
    [
      "a numeric custom_id",
      '{"custom_id":5,"method":"POST","url":"/v1/x","body":{"model":"m"}}',
      "custom_id",
    ],
  ])("rejects %s, naming the field and the line", (_name, text, field) => {
    const e = thrown(() => parseJsonlLine(text, 37, base, null));
    expect(e.field).toBe(field);
    expect(e.line).toBe(37);
    expect(e.message).toMatch(/^line 37: /);
    expect(e.message).toContain(field);
  });

  it.each([
    ["custom_id", '{"custom_id":"a\\u0000","method":"POST","url":"/v","body":{"model":"m"}}'],
    ["url", '{"custom_id":"x","method":"POST","url":"/v\\u0000","body":{"model":"m"}}'],
    ["body.model", '{"custom_id":"x","method":"POST","url":"/v","body":{"model":"\\u0000"}}'],
  ])("rejects a NUL character in %s (Postgres text cannot store it)", (field, text) => {
    const e = thrown(() => parseJsonlLine(text, 3, base, null));
    expect(e.field).toBe(field);
    expect(e.message).toContain("NUL");
  });

  it("keeps a NUL escaped inside the body (stored as JSON text)", () => {
    const row = parseJsonlLine(
      '{"custom_id":"x","method":"POST","url":"/v","body":{"model":"m","x":"\\u0000"}}',
      1,
      base,
      null,
    );
    expect(row.body).toBe('{"model":"m","x":"\\u0000"}');
  });

  it("rejects a custom_id longer than the limit", () => {
    const long = "x".repeat(MAX_CUSTOM_ID_LENGTH + 1);
    const ok = "x".repeat(MAX_CUSTOM_ID_LENGTH);
    const line = (id: string) =>
      JSON.stringify({ custom_id: id, method: "POST", url: "/v", body: { model: "m" } });
    expect(thrown(() => parseJsonlLine(line(long), 2, base, null)).field).toBe("custom_id");
    expect(parseJsonlLine(line(ok), 2, base, null).customId).toBe(ok);
  });

  describe("the body", () => {
    const bodyOf = (text: string) => parseJsonlLine(text, 1, base, null).body;

    it("is kept as written when it is the last member, whitespace included", () => {
      // Python's json.dumps separators, and a tab before the closing brace.
      const body = '{"model": "m", "messages": [{"role": "user", "content": "a \\"b\\" {c}"}]}';
      const text = `{"custom_id": "r", "method": "POST", "url": "/v1/x", "body": ${body}\t}`;
      expect(bodyOf(text)).toBe(body);
    });

    it.each([
      [
        "a second body member (the last one is the body)",
        '{"custom_id":"r","method":"POST","url":"/v","body":{"model":"a"},"body":{"model":"b"}}',
        { model: "b" },
      ],
      [
        "a member after the body",
        '{"custom_id":"r","method":"POST","body":{"model":"a","x":1},"url":"/v"}',
        { model: "a", x: 1 },
      ],
      [
        "a second model key (the upstream must read the model counted)",
        '{"custom_id":"r","method":"POST","url":"/v","body":{"model":"cheap","model":"dear"}}',
        { model: "dear" },
      ],
      [
        "a model key spelled with an escape",
        '{"custom_id":"r","method":"POST","url":"/v","body":{"model":"cheap","m\\u006fdel":"dear"}}',
        { model: "dear" },
      ],
      [
        'a body key spelled with an escape after a value "body"',
        '{"method":"POST","url":"/v","custom_id":"body","b\\u006fdy":{"model":"a"}}',
        { model: "a" },
      ],
      [
        "a body key nested in an earlier member of the same name as a later one",
        '{"url":{"body":{}},"custom_id":"r","method":"POST","url":"/v","body":{"model":"a"}}',
        { model: "a" },
      ],
      [
        "an escaped body key and a literal one nested in it",
        '{"custom_id":"r","method":"POST","url":"/v","b\\u006fdy":{"model":"a","x":{"body":{"model":"z"}}}}',
        { model: "a", x: { body: { model: "z" } } },
      ],
      [
        "a key named like a member inside the body",
        '{"custom_id":"r","method":"POST","url":"/v","body":{"model":"a","image":{"url":"u"}}}',
        { model: "a", image: { url: "u" } },
      ],
    ])("is serialised again, one member per key, with %s", (_, text, parsed) => {
      expect(bodyOf(text)).toBe(JSON.stringify(parsed));
    });

    it("always parses to the line's body, with the model counted as its only model (2,000 generated lines)", () => {
      // A fixed-seed generator of awkward lines: members in any order, some twice,
      // keys and strings with escapes, whitespace anywhere, "body" and "model" nested.
      let seed = 7;
      const rand = (n: number) => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        return (seed >>> 8) % n;
      };
      const pick = <T>(xs: readonly T[]): T => xs[rand(xs.length)]!;
      const ws = () => pick(["", "", " ", "\t", "\r\n "]);
      const key = (k: string) =>
        rand(10) === 0
          ? `"${k[0]}\\u00${k.charCodeAt(1).toString(16)}${k.slice(2)}"`
          : JSON.stringify(k);
      const str = () => JSON.stringify(pick(["a", "body", "model", 'q"uo\\te', "é", "}", "{"]));
      const value = (depth: number): string =>
        depth > 2 || rand(3) === 0 ? str() : obj(depth + 1, []);
      const obj = (depth: number, must: [string, string][]): string => {
        const members: [string, string][] = [...must];
        for (let i = rand(3) === 0 ? rand(3) : 0; i > 0; i--)
          members.push([pick(["model", "body", "x", "url"]), value(depth)]);
        members.sort(() => rand(3) - 1);
        return `{${ws()}${members.map(([k, v]) => `${key(k)}${ws()}:${ws()}${v}`).join(`,${ws()}`)}${ws()}}`;
      };
      let fast = 0;
      for (let i = 0; i < 2000; i++) {
        const body = obj(1, [["model", JSON.stringify(pick(["m1", "m2"]))]]);
        const members: [string, string][] = [
          ["custom_id", JSON.stringify(`r${i}`)],
          ["method", '"POST"'],
          ["url", '"/v1/x"'],
          ["body", body],
        ];
        if (rand(4) === 0)
          members.push([pick(["custom_id", "url"]), JSON.stringify(pick(["/v", "/w"]))]);
        if (rand(6) === 0) members.push(["body", obj(1, [["model", '"m3"']])]);
        if (rand(2) === 0) members.sort(() => rand(3) - 1);
        const text = `{${members.map(([k, v]) => `${key(k)}:${ws()}${v}`).join(",")}${ws()}}`;
        let parsed: { body: { model: unknown } };
        try {
          parsed = JSON.parse(text);
          parseJsonlLine(text, 1, base, null);
        } catch {
          continue; // a generated line the parser refuses (e.g. a url that is not a path)
        }
        const row = parseJsonlLine(text, 1, base, null);
        if (row.body !== JSON.stringify(parsed.body)) fast++;
        expect(JSON.parse(row.body)).toEqual(parsed.body);
        expect(row.model).toBe(parsed.body.model);
        // One top-level model key in what is stored: what the upstream reads is what was counted.
        const stored = row.body;
        expect(stored.match(/"model"\s*:/g)?.length ?? 0).toBeGreaterThanOrEqual(1);
        if (row.body !== JSON.stringify(parsed.body)) {
          expect(stored.match(/"model"/g)).toHaveLength(1);
        }
      }
      // The fast path was taken often enough for this to test it.
      expect(fast).toBeGreaterThan(50);
    });
  });
});

describe("validateEndpoint", () => {
  it("strips trailing slashes", () => {
    expect(validateEndpoint("https://api.example.com/v1//", "endpoint")).toBe(
      "https://api.example.com/v1",
    );
  });

  it.each([
    ["", "is required"],
    ["api.example.com", "is not a URL"],
    ["ftp://api.example.com", "http:// or https://"],
    ["https://api.example.com/?a=1", "query or fragment"],
    ["https://api.example.com/#x", "query or fragment"],
  ])("rejects %j", (value, reason) => {
    const e = thrown(() => validateEndpoint(value, "endpoint"));
    expect(e.field).toBe("endpoint");
    expect(e.message).toContain(reason);
  });
});

describe("validateTemplate", () => {
  const good: TemplateInput = {
    customId: "a",
    endpoint: "http://upstream.test/",
    method: "",
    path: "/v1/embeddings",
    body: '{"model":"emb","input":"x"}',
    model: "",
    apiKey: "",
  };

  it("normalizes a good template", () => {
    expect(validateTemplate(good, 1)).toEqual({
      line: 1,
      customId: "a",
      endpoint: "http://upstream.test",
      method: "POST",
      path: "/v1/embeddings",
      body: good.body,
      model: "emb",
      apiKey: null,
    });
  });

  it("prefers an explicit model and keeps the api key", () => {
    const row = validateTemplate(
      { ...good, model: "explicit", apiKey: "sk-explicit", body: "" },
      4,
    );
    expect(row.model).toBe("explicit");
    expect(row.apiKey).toBe("sk-explicit");
  });

  it.each([
    [{ endpoint: "http://x/\0" }, "endpoint"],
    [{ customId: "\0" }, "custom_id"],
    [{ model: "m\0" }, "model"],
    [{ apiKey: "k\0" }, "api_key"],
    [{ path: "/\0" }, "path"],
    [{ endpoint: "" }, "endpoint"],
    [{ endpoint: "not a url" }, "endpoint"],
    [{ path: "" }, "path"],
    [{ path: "v1/x" }, "path"],
    [{ method: "BREW" }, "method"],
    [{ body: "{not json" }, "body"],
    [{ body: '{"input":"x"}' }, "model"],
    [{ body: "" }, "model"],
  ] as [Partial<TemplateInput>, string][])("names templates[i].field for %j", (patch, field) => {
    // The 3rd template: index 2, line 3.
    const e = thrown(() => validateTemplate({ ...good, ...patch }, 3));
    expect(e.field).toBe(`templates[2].${field}`);
    expect(e.message).toContain(`templates[2].${field}`);
  });
});

describe("splitLines", () => {
  it("numbers lines from 1 and splits LF and CRLF", async () => {
    expect(await lines(chunksOf("a\r\nb\nc\r\n"))).toEqual([
      { line: 1, text: "a" },
      { line: 2, text: "b" },
      { line: 3, text: "c" },
    ]);
  });

  it("yields a last line without a newline", async () => {
    expect(await lines(chunksOf("a\nb"))).toEqual([
      { line: 1, text: "a" },
      { line: 2, text: "b" },
    ]);
  });

  it("skips blank lines but keeps counting them", async () => {
    expect(await lines(chunksOf("\na\n\n  \r\n\tb\n\n"))).toEqual([
      { line: 2, text: "a" },
      { line: 5, text: "\tb" },
    ]);
  });

  it("joins lines split across chunks, a CRLF split between two chunks included", async () => {
    expect(await lines(chunksOf("ab", "c", "d\r", "\nef\ng", "h", "", "\n"))).toEqual([
      { line: 1, text: "abcd" },
      { line: 2, text: "ef" },
      { line: 3, text: "gh" },
    ]);
  });

  it("decodes a multi-byte character split across chunks", async () => {
    const bytes = enc.encode("x😀é\ny\n");
    // Cut at every position: each cut splits a character somewhere.
    for (let cut = 1; cut < bytes.length; cut++) {
      const got = await lines(chunksOf(bytes.subarray(0, cut), bytes.subarray(cut)));
      expect(got).toEqual([
        { line: 1, text: "x😀é" },
        { line: 2, text: "y" },
      ]);
    }
    // And one byte at a time.
    const single = [...bytes].map((b) => Uint8Array.of(b));
    expect(await lines(chunksOf(...single))).toEqual([
      { line: 1, text: "x😀é" },
      { line: 2, text: "y" },
    ]);
  });

  it("gives the same lines whatever the chunking", async () => {
    const text = Array.from({ length: 200 }, (_, i) => `line-${i}-ü`).join("\n");
    const whole = await lines(chunksOf(text));
    const bytes = enc.encode(text);
    for (const size of [1, 3, 7, 64, 1000]) {
      const parts: Uint8Array[] = [];
      for (let i = 0; i < bytes.length; i += size) parts.push(bytes.subarray(i, i + size));
      expect(await lines(chunksOf(...parts))).toEqual(whole);
    }
    expect(whole).toHaveLength(200);
    expect(whole[199]).toEqual({ line: 200, text: "line-199-ü" });
  });

  it("drops a UTF-8 byte order mark at the start", async () => {
    const bom = Uint8Array.of(0xef, 0xbb, 0xbf);
    expect(await lines(chunksOf(bom, '{"a":1}\n'))).toEqual([{ line: 1, text: '{"a":1}' }]);
  });

  it("rejects a line longer than MAX_LINE_BYTES, even when it spans many chunks", async () => {
    const mib = new Uint8Array(1024 * 1024).fill(0x61);
    const n = MAX_LINE_BYTES / mib.length + 1;
    const e = await thrownAsync(
      lines(chunksOf("short\n", ...Array.from({ length: n }, () => mib))),
    );
    expect(e.line).toBe(2);
    expect(e.message).toContain("longer than");
  });

  it("rejects invalid UTF-8 with the line it is on", async () => {
    const e = await thrownAsync(lines(chunksOf("ok\n", Uint8Array.of(0x61, 0xff, 0x62), "\n")));
    expect(e.field).toBe("jsonl");
    expect(e.line).toBe(2);
  });

  it("rejects a truncated multi-byte character at the end", async () => {
    const e = await thrownAsync(lines(chunksOf("ok\n", Uint8Array.of(0xe2, 0x82))));
    expect(e.field).toBe("jsonl");
    expect(e.line).toBe(2);
  });
});
