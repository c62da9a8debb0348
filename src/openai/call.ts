/** One call to the OpenAI-compatible API: who makes it, its request and response. */

import type { ApiDeps } from "../api/deps.js";
import type { Principal } from "../auth/principal.js";
import { badParam, type Req, type Res } from "./http.js";

export class Call {
  /** Aborted when the client goes away (a download stops reading) or the server shuts down. */
  readonly signal: AbortSignal;

  constructor(
    readonly deps: ApiDeps,
    readonly req: Req,
    readonly res: Res,
    readonly principal: Principal,
    readonly query: URLSearchParams,
  ) {
    const gone = new AbortController();
    res.once("close", () => gone.abort());
    this.signal = AbortSignal.any([gone.signal, deps.shutdownSignal]);
  }

  /** An integer query parameter in [min, max]; `fallback` when absent. */
  intParam(name: string, fallback: number, min: number, max: number): number {
    const text = this.query.get(name);
    if (text === null || text === "") return fallback;
    const n = Number(text);
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw badParam(name, `must be an integer from ${min} to ${max}`);
    }
    return n;
  }
}
