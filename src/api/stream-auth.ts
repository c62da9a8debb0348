/**
 * Long-lived streams keep their right to run (docs/trust.md): a stream
 * opened with a token ends with UNAUTHENTICATED soon after that token is
 * revoked or deleted, instead of delivering for the batch's life.
 *
 * The call's credential (its authorization header and Host, as the auth
 * interceptor read them) is checked again by the authenticator at once when
 * a revocation is announced (NOTIFY fusillade_tokens, from any replica; "*"
 * after a LISTEN reconnect), and every `intervalMs` in case a notification
 * was missed. Streams are grouped by credential: one check per credential
 * per tick, whatever the number of streams, and the authenticator's cache
 * answers most of them without a query. Nothing is checked per message.
 */
import type { HandlerContext } from "@connectrpc/connect";
import { AuthError } from "../auth/authenticator.js";
import type { Principal } from "../auth/principal.js";
import { type Notifications, TOKENS_CHANNEL } from "../storage/notifications.js";
import { hostOf } from "./auth-interceptor.js";

/** How a call's credential is authenticated (the auth interceptor's authenticator). */
export type Authenticate = (
  authorization: string | null,
  host: string | null,
) => Promise<Principal>;

/** One open stream's hold on its credential. */
export interface StreamGrant {
  /** Aborts, with an AuthError as its reason, when the credential stops being valid. */
  readonly signal: AbortSignal;
  /** Ends the hold (the stream ended). */
  close(): void;
}

interface Credential {
  authorization: string | null;
  host: string | null;
  streams: Set<AbortController>;
}

/** The open streams of one control plane, by credential, re-checked together. */
export class StreamAuthority {
  readonly #credentials = new Map<string, Credential>();
  #timer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;
  #checking: Promise<void> | undefined;
  #again = false;

  constructor(
    private readonly authenticate: Authenticate,
    private readonly notifications: Notifications,
    private readonly intervalMs: number,
  ) {}

  /** Registers a stream of the call `ctx` until `close()`. */
  open(ctx: HandlerContext): StreamGrant {
    const authorization = ctx.requestHeader.get("authorization");
    const host = hostOf(ctx.requestHeader, ctx.url);
    const key = JSON.stringify([authorization, host]);
    let cred = this.#credentials.get(key);
    if (cred === undefined) {
      cred = { authorization, host, streams: new Set() };
      this.#credentials.set(key, cred);
    }
    const ac = new AbortController();
    cred.streams.add(ac);
    if (this.#timer === undefined) this.#start();
    const held = cred;
    return {
      signal: ac.signal,
      close: () => {
        held.streams.delete(ac);
        if (held.streams.size === 0 && this.#credentials.get(key) === held) {
          this.#credentials.delete(key);
        }
        if (this.#credentials.size === 0) this.#stop();
      },
    };
  }

  /** Checks every open stream's credential now (and once more if asked again meanwhile). */
  check(): Promise<void> {
    if (this.#checking !== undefined) {
      this.#again = true;
      return this.#checking;
    }
    this.#checking = (async () => {
      do {
        this.#again = false;
        await Promise.all([...this.#credentials.values()].map((c) => this.#checkOne(c)));
      } while (this.#again);
    })().finally(() => {
      this.#checking = undefined;
    });
    return this.#checking;
  }

  async #checkOne(cred: Credential): Promise<void> {
    try {
      await this.authenticate(cred.authorization, cred.host);
    } catch (e) {
      // Only a refusal ends streams: a database that cannot answer now is asked again next tick.
      if (!(e instanceof AuthError)) return;
      for (const ac of cred.streams) ac.abort(e);
    }
  }

  #start(): void {
    this.#timer = setInterval(() => void this.check(), this.intervalMs);
    this.#timer.unref();
    // The authenticator drops its cache on the same notification; checking after this turn
    // of the event loop makes sure it has, whichever listener runs first.
    this.#unsubscribe = this.notifications.on(TOKENS_CHANNEL, () => {
      setImmediate(() => void this.check());
    });
  }

  #stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
  }
}
