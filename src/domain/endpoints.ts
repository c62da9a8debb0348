/**
 * The outbound allow-list (docs/trust.md): which upstream endpoints files may
 * name, and which addresses a dispatcher may connect to. Pure: no I/O.
 *
 * Patterns are origins (`scheme://host[:port]`) where the host may start
 * with `*.` (any subdomain). A listed origin is always allowed; otherwise,
 * under the "deny private" default (servers with tokens), link-local and
 * cloud metadata addresses and the control plane's own address are refused.
 */
import { isIP } from "node:net";

export interface EndpointPolicy {
  /** Allowed origins; undefined: any origin not denied below. */
  allow: readonly OriginPattern[] | undefined;
  /** Refuse link-local and metadata addresses, and `self`, unless listed. */
  denyPrivate: boolean;
  /** The control plane's own origins (refused under denyPrivate unless listed). */
  self: readonly string[];
}

export interface OriginPattern {
  scheme: string;
  /** Lowercased; a leading "*." matches any subdomain. */
  host: string;
  /** "" = the scheme's default port; "*" = any. */
  port: string;
}

/** Anything goes: local mode's default. */
export const OPEN_POLICY: EndpointPolicy = Object.freeze({
  allow: undefined,
  denyPrivate: false,
  self: [],
});

const METADATA_HOSTS = new Set(["metadata.google.internal", "metadata", "instance-data"]);

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
      if (!m) {
        throw new Error(
          `${name}: ${JSON.stringify(s)} is not an origin such as https://api.example.com or https://*.example.com:8443`,
        );
      }
      return { scheme: m[1]!, host: `${m[2] ?? ""}${m[3]!.toLowerCase()}`, port: m[4] ?? "" };
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

/** Link-local (169.254.0.0/16, fe80::/10, IPv4-mapped too) addresses: cloud metadata lives there. */
export function isLinkLocalAddress(ip: string): boolean {
  // ::ffff:a9fe:101 is how a URL writes ::ffff:169.254.1.1
  const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(ip);
  if (hex) {
    const hi = Number.parseInt(hex[1]!, 16);
    return hi >> 8 === 169 && (hi & 0xff) === 254;
  }
  const v4 = ip.toLowerCase().startsWith("::ffff:") ? ip.slice(7) : ip;
  if (isIP(v4) === 4) return v4.startsWith("169.254.");
  if (isIP(ip) === 6) return /^fe[89ab][0-9a-f]:/i.test(ip);
  return false;
}

/**
 * Why `endpoint` (a validated base URL) is refused by `policy`, or undefined
 * when it is allowed. Names only (addresses are checked again at dispatch,
 * after DNS).
 */
export function endpointRefusal(policy: EndpointPolicy, endpoint: string): string | undefined {
  const url = new URL(endpoint);
  if (isListed(policy, url)) return undefined;
  if (policy.allow !== undefined) {
    return `${url.origin} is not in the server's allowed endpoints (--allowed-endpoints / FUSILLADE_ALLOWED_ENDPOINTS)`;
  }
  if (!policy.denyPrivate) return undefined;
  const host = url.hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (METADATA_HOSTS.has(host) || isLinkLocalAddress(host)) {
    return `${url.origin} is a link-local or cloud metadata address; list it in --allowed-endpoints to allow it`;
  }
  if (policy.self.includes(url.origin)) {
    return `${url.origin} is this control plane's own address; list it in --allowed-endpoints to allow it`;
  }
  return undefined;
}
