/**
 * The outbound policy (docs/trust.md): which upstream endpoints files may
 * name. Pure: no I/O. The dispatcher applies the same address rules again
 * after DNS (src/http/outbound-guard.ts).
 *
 * Patterns are origins (`scheme://host[:port]`) where the host may start
 * with `*.` (any subdomain). With a list, only listed origins pass (and they
 * always do). Without one, a server with tokens ("deny private") refuses
 * every address that is not public unicast ({@link ForbiddenAddresses}) and
 * the names that always mean one (`localhost`, the metadata names).
 */
import { ForbiddenAddresses } from "./forbidden-addresses.js";

export interface EndpointPolicy {
  /** Allowed origins; undefined: any origin not denied below. */
  allow: readonly OriginPattern[] | undefined;
  /** Refuse non-public addresses and the names of loopback and metadata services. */
  denyPrivate: boolean;
  /** The address rules (with this host's own addresses). */
  forbidden: ForbiddenAddresses;
}

export interface OriginPattern {
  scheme: string;
  /** Lowercased, canonical; a leading "*." matches any subdomain. */
  host: string;
  /** "" = the scheme's default port; "*" = any. */
  port: string;
}

/** Anything goes: local mode's default. */
export const OPEN_POLICY: EndpointPolicy = Object.freeze({
  allow: undefined,
  denyPrivate: false,
  forbidden: new ForbiddenAddresses(),
});

/** Names that reach a cloud metadata service wherever they are resolved. */
const METADATA_NAMES = new Set([
  "metadata.google.internal",
  "metadata.goog",
  "metadata",
  "instance-data",
  "instance-data.ec2.internal",
  "metadata.tencentyun.com",
]);

/**
 * Why the host of a URL (`URL.hostname`: the WHATWG parser has already made
 * `2130706433`, `0x7f.1` and `[0:0:0:0:0:ffff:127.0.0.1]` canonical) is
 * refused under "deny private", as "is …"; undefined when it is not.
 */
export function hostRefusal(forbidden: ForbiddenAddresses, hostname: string): string | undefined {
  const byAddress = forbidden.refusal(hostname);
  if (byAddress !== undefined) return byAddress;
  const name = hostname.toLowerCase().replace(/\.+$/, "");
  // RFC 6761: localhost and its subdomains are loopback, whatever DNS says.
  if (name === "localhost" || name.endsWith(".localhost")) return "is a loopback name";
  if (METADATA_NAMES.has(name)) return "is a cloud metadata name";
  return undefined;
}

/** Parses `--allowed-endpoints` ("https://api.openai.com,https://*.example.com:8443"). */
export function parseAllowList(text: string, name: string): OriginPattern[] {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((s) => {
      const m = /^(https?):\/\/(\*\.)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d+|\*))?\/?$/.exec(
        s,
      );
      const notAnOrigin = () =>
        new Error(
          `${name}: ${JSON.stringify(s)} is not an origin such as https://api.example.com or https://*.example.com:8443`,
        );
      if (!m) throw notAnOrigin();
      // Canonical, as URL.hostname is when patterns are matched: an address
      // listed as http://2130706433 or [0::1] matches what files name.
      let host = m[3]!;
      if (m[2] === undefined) {
        try {
          host = new URL(`${m[1]}://${host}`).hostname;
        } catch {
          throw notAnOrigin();
        }
      }
      return { scheme: m[1]!, host: `${m[2] ?? ""}${host.toLowerCase()}`, port: m[4] ?? "" };
    });
}

function defaultPort(scheme: string): string {
  return scheme === "https:" || scheme === "https" ? "443" : "80";
}

function matches(p: OriginPattern, url: URL): boolean {
  if (`${p.scheme}:` !== url.protocol) return false;
  const host = url.hostname.toLowerCase();
  const hostOk = p.host.startsWith("*.") ? host.endsWith(p.host.slice(1)) : host === p.host;
  if (!hostOk) return false;
  if (p.port === "*") return true;
  const want = p.port === "" ? defaultPort(p.scheme) : p.port;
  return (url.port === "" ? defaultPort(url.protocol) : url.port) === want;
}

/** Whether `url`'s origin is listed in `policy.allow`. */
export function isListed(policy: EndpointPolicy, url: URL): boolean {
  return policy.allow?.some((p) => matches(p, url)) ?? false;
}

/**
 * Why `endpoint` (a validated base URL) is refused by `policy`, or undefined
 * when it is allowed. Literal addresses and reserved names only: names are
 * resolved, and their addresses checked, by the dispatcher.
 */
export function endpointRefusal(policy: EndpointPolicy, endpoint: string): string | undefined {
  const url = new URL(endpoint);
  if (isListed(policy, url)) return undefined;
  if (policy.allow !== undefined) {
    return `${url.origin} is not in the server's allowed endpoints (--allowed-endpoints / FUSILLADE_ALLOWED_ENDPOINTS)`;
  }
  if (!policy.denyPrivate) return undefined;
  const why = hostRefusal(policy.forbidden, url.hostname);
  return why === undefined
    ? undefined
    : `${url.origin}: ${url.hostname} ${why}; a server with tokens sends only to public addresses unless --allowed-endpoints lists the origin`;
}
