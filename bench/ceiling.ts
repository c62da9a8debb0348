/**
 * The no-database ceiling: plain undici loops against the same upstream with
 * the same per-model limits — one loop per slot, each sending the next
 * request as soon as its last one answered. What the machine, Node and the
 * upstream allow with no control plane, no Postgres and no leases; every
 * dispatch figure is printed as a share of it, measured in the same run.
 */
import { performance } from "node:perf_hooks";
import { Agent } from "undici";

/**
 * One OpenAI batch line's `body`. Here rather than in ./common.ts so that the
 * ceiling's own process (./ceiling-process.ts) loads nothing but undici.
 */
export function requestBody(model: string, filler: string): Record<string, unknown> {
  return { model, messages: [{ role: "user", content: filler }] };
}

export interface CeilingModel {
  model: string;
  limit: number;
  /** Requests of this model to send. */
  requests: number;
}

/** Sends every model's requests with `limit` loops each; resolves with the wall time in ms. */
export async function runCeiling(
  url: string,
  models: readonly CeilingModel[],
  pad: number,
): Promise<number> {
  const slots = models.reduce((n, m) => n + m.limit, 0);
  const agent = new Agent({ connections: slots, headersTimeout: 0, bodyTimeout: 0 });
  const { origin } = new URL(url);
  const filler = "x".repeat(pad);
  const t0 = performance.now();
  try {
    await Promise.all(
      models.flatMap((m) => {
        const body = JSON.stringify(requestBody(m.model, filler));
        let next = 0;
        const loop = async () => {
          while (next < m.requests) {
            const i = next++;
            const res = await agent.request({
              origin,
              path: "/v1/chat/completions",
              method: "POST",
              headers: {
                "content-type": "application/json",
                authorization: "Bearer sk-bench",
                "x-request-id": `ceiling-${m.model}-${i}`,
              },
              body,
            });
            await res.body.text();
            if (res.statusCode !== 200) throw new Error(`ceiling: upstream said ${res.statusCode}`);
          }
        };
        return Array.from({ length: Math.min(m.limit, m.requests) }, loop);
      }),
    );
    return performance.now() - t0;
  } finally {
    await agent.close();
  }
}
