/** The one error type of the client, and the wrappers that turn Connect errors into it. */
import { Code, ConnectError } from "@connectrpc/connect";

/** Every failure of a client call: the gRPC code and the server's message (it names the field, and the JSONL line). */
export class FusilladeError extends Error {
  constructor(
    /** The gRPC code, e.g. Code.NotFound. */
    readonly code: Code,
    /** The server's message without the code, e.g. `line 3: custom_id: is required …`. */
    readonly rawMessage: string,
    options?: ErrorOptions,
  ) {
    super(`[${Code[code] ?? code}] ${rawMessage}`, options);
    this.name = "FusilladeError";
  }

  /** The code's name, e.g. "NotFound". */
  get codeName(): string {
    return Code[this.code] ?? "Unknown";
  }

  /** A Connect error as a FusilladeError (its cause). */
  static from(e: ConnectError): FusilladeError {
    return new FusilladeError(e.code, e.rawMessage, { cause: e });
  }
}

function rethrow(e: unknown): never {
  throw e instanceof ConnectError ? FusilladeError.from(e) : e;
}

/** Runs a call; a ConnectError becomes a FusilladeError. */
export async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    rethrow(e);
  }
}

/** Iterates a server stream; a ConnectError becomes a FusilladeError. */
export async function* stream<T>(iterable: () => AsyncIterable<T>): AsyncGenerator<T> {
  try {
    yield* iterable();
  } catch (e) {
    rethrow(e);
  }
}
