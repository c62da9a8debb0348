/**
 * GetBatchResults' transport alone: a bare Connect server (HTTP/2, the
 * control plane's compression threshold, no interceptors) that answers
 * GetBatchResults with messages made beforehand, and no database. What any
 * results path costs at least with one line a message through Connect, in
 * this process: the reads scenario prints it beside Fusillade's and SQL's.
 */
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { BATCH_COMPRESS_MIN_BYTES } from "../src/api/routes.js";
import {
  BatchService,
  type GetBatchResultsResponse,
} from "../src/gen/fusillade/v1/batch_service_pb.js";
import { type BatchClient, clients } from "./common.js";

/** A server that streams `messages` to every GetBatchResults; its client, and close. */
export async function transportOnly(
  messages: readonly GetBatchResultsResponse[],
): Promise<{ batch: BatchClient; close: () => Promise<void> }> {
  const handler = connectNodeAdapter({
    routes: (router) =>
      router.service(
        BatchService,
        {
          async *getBatchResults() {
            yield* messages;
          },
        },
        { compressMinBytes: BATCH_COMPRESS_MIN_BYTES },
      ),
  });
  const server = http2.createServer({}, handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s: http2.ServerHttp2Session) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    batch: clients(`http://127.0.0.1:${port}`).batch,
    close: async () => {
      // close() waits for idle client sessions (DESIGN §8): close them too.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sessions) s.close();
      await closed;
    },
  };
}
