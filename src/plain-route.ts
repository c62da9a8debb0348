/**
 * Plain HTTP routes on the API port, tried before Connect routing (/metrics,
 * the dashboard, the OpenAI-compatible /v1 API). Types only, below both the
 * server that runs the routes (src/api/server.ts) and the modules that make
 * them (src/metrics, src/web, src/openai); imports nothing.
 */

/** What a plain route reads of a request (HTTP/1.1 or HTTP/2). */
export interface PlainRequest {
  method?: string | undefined;
  url?: string | undefined;
  headers: Record<string, string | string[] | undefined>;
}

/** What a plain route writes. */
export interface PlainResponse {
  readonly headersSent: boolean;
  writeHead(status: number, headers: Record<string, string | number>): unknown;
  end(body?: string | Uint8Array): unknown;
}

/** A plain HTTP route: true when it answered the request. */
export type PlainRoute = (req: PlainRequest, res: PlainResponse) => boolean;
