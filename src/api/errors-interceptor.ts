/** A server interceptor that maps domain errors to gRPC codes (see errors.ts). */
import type { Interceptor } from "@connectrpc/connect";
import { toConnectError } from "./errors.js";

async function* mapStreamErrors<T>(
  it: AsyncIterable<T>,
  log: (e: unknown) => void,
): AsyncIterable<T> {
  try {
    yield* it;
  } catch (e) {
    throw toConnectError(e, log);
  }
}

/** Maps domain errors to gRPC codes, for unary and streaming responses alike. */
export function errorInterceptor(log: (e: unknown) => void): Interceptor {
  return (next) => async (req) => {
    try {
      const res = await next(req);
      if (res.stream) return { ...res, message: mapStreamErrors(res.message, log) };
      return res;
    } catch (e) {
      throw toConnectError(e, log);
    }
  };
}
