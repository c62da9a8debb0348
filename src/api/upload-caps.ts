/**
 * Caps on the size of one file: total bytes of UploadFile content and the
 * number of templates of any file. Checked while the content streams in, so
 * an oversized upload is refused as soon as it crosses the cap, before it is
 * spooled to the end or reaches the database.
 */
import { ResourceExhaustedError } from "../domain/errors.js";
import type { TemplateRow } from "../domain/templates.js";

/** The settings that change the caps (src/config reads them). */
const BYTES_SETTING = "FUSILLADE_MAX_UPLOAD_BYTES";
const LINES_SETTING = "FUSILLADE_MAX_UPLOAD_LINES";

/** `chunks`, adding their sizes to `total`; throws once `total.bytes` passes `maxBytes`. */
export async function* cappedBytes(
  chunks: AsyncIterable<Uint8Array>,
  total: { bytes: number },
  maxBytes: number,
): AsyncGenerator<Uint8Array> {
  for await (const c of chunks) {
    total.bytes += c.byteLength;
    if (total.bytes > maxBytes) {
      throw new ResourceExhaustedError(
        `the file is larger than the cap of ${maxBytes} bytes (setting ${BYTES_SETTING})`,
      );
    }
    yield c;
  }
}

/** `rows`; throws at the first row past `maxLines`. */
export async function* cappedRows(
  rows: AsyncIterable<TemplateRow>,
  maxLines: number,
): AsyncGenerator<TemplateRow> {
  let n = 0;
  for await (const row of rows) {
    if (++n > maxLines) {
      throw new ResourceExhaustedError(
        `the file holds more than the cap of ${maxLines} requests (setting ${LINES_SETTING})`,
      );
    }
    yield row;
  }
}
