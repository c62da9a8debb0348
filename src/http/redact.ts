/**
 * Keeps the secrets of a request (its API key) out of everything an attempt
 * leaves behind: stored bodies, kept headers, error messages. An upstream that
 * echoes request headers (a debugging proxy, an echo endpoint) may write the
 * key back in another spelling, so each character of a secret matches as
 * written, in any letter case, JSON-escaped (`\u002f`, `\/`, behind any number
 * of backslashes for JSON nested in a JSON string) or percent-encoded.
 */

const REDACTED = "[redacted]";
/**
 * Shortest value of an ordinary request header scrubbed: shorter ones are not
 * credentials, and scrubbing them would mangle bodies. Credentials (the
 * `authorization` header's) are scrubbed at any length; the API accepts no
 * API key shorter than this (MIN_API_KEY_LENGTH in src/domain/templates.ts).
 */
const MIN_SCRUB_LENGTH = 8;
/** Request headers whose values are never secret (and common in messages). */
const NON_SECRET_HEADERS: ReadonlySet<string> = new Set([
  "accept",
  "content-length",
  "content-type",
  "user-agent",
  // ours: ids the upstream may echo back on purpose
  "x-fusillade-request-id",
  "x-fusillade-custom-id",
  "x-fusillade-batch-id",
  "traceparent",
]);
const CREDENTIAL_HEADERS: ReadonlySet<string> = new Set(["authorization", "proxy-authorization"]);

/** Header values (and their words) worth hiding, longest first. */
export function secretsOf(headers: ReadonlyArray<readonly [string, string]>): string[] {
  const secrets = new Set<string>();
  for (const [rawName, value] of headers) {
    const name = rawName.toLowerCase();
    if (NON_SECRET_HEADERS.has(name)) continue;
    if (CREDENTIAL_HEADERS.has(name)) {
      // "Bearer <key>": the key (the scheme's word is no secret).
      const credential = value.trim().replace(/^\S+\s+/, "");
      if (credential !== "") secrets.add(credential);
      continue;
    }
    for (const part of [value, ...value.split(/\s+/)]) {
      if (part.length >= MIN_SCRUB_LENGTH) secrets.add(part);
    }
  }
  return [...secrets].sort((a, b) => b.length - a.length);
}

const REGEX_SPECIAL = /[\\^$.*+?()[\]{}|/-]/g;
const escapeRegExp = (s: string) => s.replace(REGEX_SPECIAL, "\\$&");
const hex = (n: number, width: number) => n.toString(16).padStart(width, "0");

/**
 * The ways one character of a secret may be written; `plain` is how the text
 * searched holds it as written (itself in a string, its UTF-8 bytes in a
 * latin1 view of a body).
 */
function spellings(ch: string, plain: (ch: string) => string): string {
  const units = [...Array(ch.length).keys()].map((i) => ch.charCodeAt(i));
  const alternatives = [
    escapeRegExp(plain(ch)),
    units.map((u) => `\\\\+u${hex(u, 4)}`).join(""),
    [...Buffer.from(ch)].map((b) => `%${hex(b, 2)}`).join(""),
  ];
  // JSON's two-character escapes of characters a key may hold.
  if (ch === "/" || ch === '"' || ch === "\\") alternatives.push(`\\\\+${escapeRegExp(ch)}`);
  return `(?:${alternatives.join("|")})`;
}

/** How a searched text holds a character as written: itself, or its UTF-8 bytes in a latin1 view. */
type Plain = "string" | "latin1";
const PLAIN: Record<Plain, (ch: string) => string> = {
  string: (ch) => ch,
  latin1: (ch) => Buffer.from(ch).toString("latin1"),
};

/**
 * Compiled patterns by secrets, least recently used first. A request's key is
 * its file's, shared by all of the file's requests: nearly every attempt
 * finds its two patterns here instead of building and compiling them again.
 */
const PATTERNS = new Map<string, RegExp>();
const MAX_PATTERNS = 256;

/**
 * One case-insensitive pattern for all `secrets` (longest first), or undefined
 * for none. Cost, measured on 32 MiB of printable text holding no secret, one
 * 59-character key: 90–115 ms (an exact-bytes search: 20 ms; the same pattern
 * on 24 MiB of JSON text: 60 ms). Bodies are usually kilobytes, and a 32 MiB
 * one took far longer than that to arrive.
 */
function secretsPattern(secrets: string[], plain: Plain): RegExp | undefined {
  if (secrets.length === 0) return undefined;
  const key = `${plain}\0${secrets.join("\0")}`;
  let re = PATTERNS.get(key);
  if (re !== undefined) {
    PATTERNS.delete(key);
  } else {
    const each = secrets.map((s) => [...s].map((ch) => spellings(ch, PLAIN[plain])).join(""));
    re = new RegExp(each.join("|"), "gi");
    if (PATTERNS.size >= MAX_PATTERNS) PATTERNS.delete(PATTERNS.keys().next().value!);
  }
  PATTERNS.set(key, re);
  return re;
}

/** Replaces every match of `re` in `s`; undefined when there was none. */
function replaceAll(re: RegExp, s: string): string | undefined {
  let hit = false;
  const out = s.replace(re, () => {
    hit = true;
    return REDACTED;
  });
  return hit ? out : undefined;
}

/**
 * Returns a function that replaces the request's header values (and their
 * whitespace-separated parts, e.g. the token of `Bearer <token>`) in a
 * message by "[redacted]". Error texts from lower layers should never contain
 * them; this makes sure an API key cannot reach a stored error or a log line
 * even if one did.
 */
export function headerScrubber(
  headers: ReadonlyArray<readonly [string, string]>,
): (s: string) => string {
  const re = secretsPattern(secretsOf(headers), "string");
  return re === undefined ? (s) => s : (s) => replaceAll(re, s) ?? s;
}

/** {@link headerScrubber} for bytes (bodies); returns `b` itself when it holds no secret. */
export function bodyScrubber(
  headers: ReadonlyArray<readonly [string, string]>,
): (b: Uint8Array) => Uint8Array {
  // Searched as latin1: one character per byte, so any body (UTF-8 or not)
  // comes back byte for byte, and a secret's characters match as their UTF-8 bytes.
  const re = secretsPattern(secretsOf(headers), "latin1");
  if (re === undefined) return (b) => b;
  return (b) => {
    const text = Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("latin1");
    const out = replaceAll(re, text);
    if (out === undefined) return b;
    const buf = Buffer.from(out, "latin1");
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  };
}
