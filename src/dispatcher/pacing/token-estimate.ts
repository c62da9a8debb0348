/**
 * The tokens a request is charged before it is sent, and what its response
 * says it used (docs/pacing.md, "Tokens"). The estimate is one a user can
 * work out by hand: the prompt's characters / 4 (rounded up) plus the most
 * the completion may use (`max_tokens`, `max_completion_tokens` or
 * `max_output_tokens`; `defaultCompletionTokens` when none is set); for
 * embeddings, the input's characters / 4 (or its length when it is given
 * as token ids). Whatever the response's `usage` reports replaces it.
 */

/** Characters per token in the estimate (English text averages about 4). */
export const CHARS_PER_TOKEN = 4;

/** Completion tokens charged when the body sets no maximum. @default 1024 */
export const DEFAULT_COMPLETION_TOKENS = 1024;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Characters of the text in a prompt-like value: strings, content parts, arrays of them. */
function textChars(v: Json | undefined): number {
  if (typeof v === "string") return v.length;
  if (Array.isArray(v)) return v.reduce<number>((n, x) => n + textChars(x), 0);
  if (v !== null && typeof v === "object") {
    // A chat message ({role, content}) or a content part ({type: "text", text}).
    return textChars(v.content) + textChars(v.text);
  }
  return 0;
}

/** Tokens of an embeddings `input`: token ids count one each, text by its characters. */
function inputTokens(v: Json | undefined): number {
  if (Array.isArray(v) && v.every((x) => typeof x === "number")) return v.length;
  if (Array.isArray(v)) return v.reduce<number>((n, x) => n + inputTokens(x), 0);
  return Math.ceil(textChars(v) / CHARS_PER_TOKEN);
}

function maxCompletion(o: { [k: string]: Json }, fallback: number): number {
  for (const k of ["max_completion_tokens", "max_tokens", "max_output_tokens"]) {
    const v = o[k];
    if (typeof v === "number" && Number.isFinite(v) && v >= 0) return Math.ceil(v);
  }
  return fallback;
}

/** The tokens charged for a request body (JSON text; anything else counts its characters). */
export function estimateTokens(
  body: string,
  defaultCompletionTokens = DEFAULT_COMPLETION_TOKENS,
): number {
  let o: Json;
  try {
    o = JSON.parse(body) as Json;
  } catch {
    return Math.ceil(body.length / CHARS_PER_TOKEN);
  }
  if (o === null || typeof o !== "object" || Array.isArray(o)) {
    return Math.ceil(body.length / CHARS_PER_TOKEN);
  }
  if (o.input !== undefined && o.messages === undefined && o.prompt === undefined) {
    // Embeddings (and moderation): no completion. The Responses API's `input`
    // comes with a max_output_tokens, counted when set.
    const out = maxCompletion(o, 0);
    return inputTokens(o.input) + out;
  }
  const prompt = textChars(o.messages) + textChars(o.prompt) + textChars(o.system);
  return Math.ceil(prompt / CHARS_PER_TOKEN) + maxCompletion(o, defaultCompletionTokens);
}

/**
 * Tokens a response's `usage` reports (`total_tokens`, else input + output
 * in either naming); undefined when the body has none.
 */
export function usageTokens(body: string): number | undefined {
  if (!body.includes('"usage"')) return undefined;
  let u: Json | undefined;
  try {
    u = (JSON.parse(body) as { usage?: Json }).usage;
  } catch {
    return undefined;
  }
  if (u === null || typeof u !== "object" || Array.isArray(u)) return undefined;
  const n = (k: string) => (typeof u[k] === "number" ? (u[k] as number) : undefined);
  const total = n("total_tokens");
  if (total !== undefined) return total;
  const input = n("prompt_tokens") ?? n("input_tokens");
  const output = n("completion_tokens") ?? n("output_tokens");
  return input === undefined && output === undefined ? undefined : (input ?? 0) + (output ?? 0);
}
