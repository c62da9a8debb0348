/**
 * Bounded reading of a response body. Never throws: a stream error is returned
 * beside whatever was read before it, so the caller can still report status and
 * excerpt.
 */

/** What {@link readBounded} got from a body. */
export interface BoundedRead {
  /** The first `keepBytes` bytes (fewer if the body was shorter). */
  kept: Uint8Array;
  /** Bytes received in total (kept or not). */
  receivedBytes: number;
  /** True when more than `stopAfterBytes` arrived and reading stopped early. */
  overflowed: boolean;
  /** Set when the stream failed (abort, timeout, socket error) before its end. */
  error?: unknown;
}

/**
 * Reads `body` keeping its first `keepBytes` bytes; stops (leaving the stream
 * destroyed, which makes undici tear the connection down) as soon as more than
 * `stopAfterBytes` have arrived.
 */
export async function readBounded(
  body: AsyncIterable<Uint8Array>,
  keepBytes: number,
  stopAfterBytes: number,
): Promise<BoundedRead> {
  const chunks: Uint8Array[] = [];
  let keptBytes = 0;
  let receivedBytes = 0;
  let overflowed = false;
  let failed = false;
  let error: unknown;
  try {
    for await (const chunk of body) {
      receivedBytes += chunk.byteLength;
      if (keptBytes < keepBytes) {
        const slice = chunk.subarray(0, keepBytes - keptBytes);
        chunks.push(slice);
        keptBytes += slice.byteLength;
      }
      if (receivedBytes > stopAfterBytes) {
        overflowed = true;
        break; // leaving the loop destroys the stream
      }
    }
  } catch (err) {
    failed = true;
    error = err;
  }
  const read: BoundedRead = { kept: concat(chunks, keptBytes), receivedBytes, overflowed };
  if (failed) read.error = error ?? new Error("response body stream failed");
  return read;
}

/** Copies chunks into one exactly-sized array (not a view of a pooled Buffer). */
function concat(chunks: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}
