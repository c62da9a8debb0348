/**
 * The dispatcher's half of the outbound policy (docs/trust.md): the upload
 * check saw names only, so the addresses a request really connects to are
 * checked here, after DNS, in the `lookup` undici's connector hands to
 * net.connect (an address literal is never looked up: {@link OutboundGuard.literalRefusal}).
 * A refusal is the error code FUSILLADE_ENDPOINT_DENIED: not retriable.
 */
import dns from "node:dns";
import os from "node:os";
import { hostRefusal } from "../domain/endpoints.js";
import { ForbiddenAddresses } from "../domain/forbidden-addresses.js";

/** The error code of a refused connection (classify.ts: fatal). */
export const ENDPOINT_DENIED = "FUSILLADE_ENDPOINT_DENIED";

const HOW_TO_ALLOW =
  "refused by the outbound policy; list the host in --allowed-endpoints (FUSILLADE_ALLOWED_ENDPOINTS) to allow it";

/** Every address on this machine's interfaces (a public one reaches its services too). */
export function hostAddresses(): string[] {
  return Object.values(os.networkInterfaces()).flatMap((list) =>
    (list ?? []).map((i) => i.address),
  );
}

function hostAllowed(host: string, allowed: readonly string[]): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, "");
  return allowed.some((p) => (p.startsWith("*.") ? h.endsWith(p.slice(1)) : h === p));
}

/** The address rules of one dispatcher, and the hosts its allow-list exempts from them. */
export class OutboundGuard {
  readonly #allowed: readonly string[];
  readonly #forbidden: ForbiddenAddresses;

  constructor(allowedHosts: readonly string[], ownAddresses: readonly string[] = hostAddresses()) {
    this.#allowed = allowedHosts;
    this.#forbidden = new ForbiddenAddresses(ownAddresses);
  }

  /** Why a URL hostname (a literal address, or a name that always means one) is refused; undefined if not. */
  literalRefusal(hostname: string): string | undefined {
    if (hostAllowed(hostname, this.#allowed)) return undefined;
    const why = hostRefusal(this.#forbidden, hostname);
    return why === undefined ? undefined : `${hostname} ${why}: ${HOW_TO_ALLOW}`;
  }

  /**
   * A `lookup` for net.connect that fails with {@link ENDPOINT_DENIED} when a
   * name that is not allowed resolves to any forbidden address: the check is
   * on the very addresses the socket then connects to (no second resolution
   * for a rebinding DNS server to answer differently).
   */
  lookup(base: typeof dns.lookup = dns.lookup): typeof dns.lookup {
    return ((hostname: string, options: dns.LookupOptions, callback: (...a: unknown[]) => void) => {
      base(hostname, { ...options, all: true }, (err, addresses) => {
        if (err) return callback(err);
        if (!hostAllowed(hostname, this.#allowed)) {
          for (const { address } of addresses) {
            const why = this.#forbidden.refusal(address);
            if (why === undefined) continue;
            const e = new Error(
              `${hostname} resolves to ${address}, which ${why}: ${HOW_TO_ALLOW}`,
            ) as NodeJS.ErrnoException;
            e.code = ENDPOINT_DENIED;
            return callback(e);
          }
        }
        if (options.all) return callback(null, addresses);
        const first = addresses[0];
        if (first === undefined) {
          const e = new Error(`${hostname}: no addresses`) as NodeJS.ErrnoException;
          e.code = "ENOTFOUND";
          return callback(e);
        }
        return callback(null, first.address, first.family);
      });
    }) as typeof dns.lookup;
  }
}
