/**
 * JSON text handled without recursion: V8's JSON.parse copes with any
 * nesting, but JSON.stringify (and many readers of our files) recurse per
 * level and fail on bodies an upstream or a user can send (20,000 levels).
 */

/**
 * Valid JSON `text` without whitespace between tokens, or undefined when it
 * nests deeper than `maxDepth`. One pass, no recursion; `text` must be valid JSON.
 */
export function compactJson(text: string, maxDepth: number): string | undefined {
  let out = "";
  let depth = 0;
  let start = 0; // start of the run of characters to copy
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
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
