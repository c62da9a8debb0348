/**
 * JSON text handled without recursion: V8's JSON.parse copes with any
 * nesting, but JSON.stringify (and many readers of our files) recurse per
 * level and fail on bodies an upstream or a user can send (20,000 levels).
 */

/**
 * The index of the quote that closes a string of valid JSON `text` whose
 * content starts at `from` (text.length when there is none). Searched with
 * indexOf, not a character at a time: a body is mostly strings, and this
 * made compactJson of 1 KiB chat completions ~4× faster.
 */
function stringEnd(text: string, from: number): number {
  for (;;) {
    const q = text.indexOf('"', from);
    if (q < 0) return text.length;
    // Escaped when an odd run of backslashes comes before it.
    let b = q - 1;
    while (text.charCodeAt(b) === 0x5c) b--;
    if ((q - 1 - b) % 2 === 0) return q;
    from = q + 1;
  }
}

/**
 * Valid JSON `text` without whitespace between tokens, or undefined when it
 * nests deeper than `maxDepth`. One pass, no recursion; `text` must be valid JSON.
 */
export function compactJson(text: string, maxDepth: number): string | undefined {
  let out = "";
  let depth = 0;
  let start = 0; // start of the run of characters to copy
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) i = stringEnd(text, i + 1);
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) return undefined;
    } else if (c === 0x5d || c === 0x7d) depth--;
    else if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
      out += text.slice(start, i);
      start = i + 1;
    }
  }
  return out + text.slice(start);
}

/** How many of `char` `text` holds, up to `max + 1` (a native search, not a loop per character). */
function countUpTo(text: string, char: string, max: number): number {
  let n = 0;
  for (let i = text.indexOf(char); i !== -1 && n <= max; i = text.indexOf(char, i + 1)) n++;
  return n;
}

/** True when valid JSON `text` nests deeper than `maxDepth` (arrays and objects). */
export function nestsDeeperThan(text: string, maxDepth: number): boolean {
  // Nesting that deep needs more than `maxDepth` opening brackets. A line of
  // ordinary JSON has a handful: counting them is a native search, where the
  // scan below looks at every character.
  const braces = countUpTo(text, "{", maxDepth);
  if (braces + countUpTo(text, "[", maxDepth - braces) <= maxDepth) return false;
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}
