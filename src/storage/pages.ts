/** Opaque page tokens for keyset pagination. */
import { InvalidArgumentError } from "../domain/errors.js";

/** Encodes a keyset position as an opaque token. */
export function encodePageToken(position: readonly (string | number)[]): string {
  return Buffer.from(JSON.stringify(position)).toString("base64url");
}

/** Decodes a token made by encodePageToken; "" means the first page. */
export function decodePageToken(token: string, arity: number): (string | number)[] | undefined {
  if (token === "") return undefined;
  try {
    const value: unknown = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
    if (
      Array.isArray(value) &&
      value.length === arity &&
      value.every((v) => typeof v === "string" || typeof v === "number")
    ) {
      return value;
    }
  } catch {
    // fall through
  }
  throw new InvalidArgumentError("page_token", "is not a token returned by this API");
}

/** Default and maximum page sizes. */
export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 1000;

/** Clamps a requested page size; 0 means the default; negative is an error. */
export function pageSize(requested: number): number {
  if (requested < 0) throw new InvalidArgumentError("page_size", "must not be negative");
  if (requested === 0) return DEFAULT_PAGE_SIZE;
  return Math.min(requested, MAX_PAGE_SIZE);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether `id` has the shape of our ids (a malformed id names nothing). */
export function isId(id: string): boolean {
  return UUID.test(id);
}
