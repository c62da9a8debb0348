/** Loopback names and addresses, as the server's Host check and the clients see them. */

const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]", "::1"]);

/** Whether a Host header (with or without port) names a loopback address. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  const name = h.startsWith("[") ? h.slice(0, h.indexOf("]") + 1) : h.replace(/:\d+$/, "");
  return LOOPBACK_HOSTS.has(name) || /^127(\.\d{1,3}){3}$/.test(name);
}

/**
 * Whether a client of the control plane at `baseUrl` should ask for compressed
 * answers: not over loopback, where gzip is CPU on both ends and saves no time
 * (a 20,000-line `results` spent more in zlib than on the wire: bench/RESULTS.md,
 * 2026-12-06); elsewhere yes, since a link may be slow.
 */
export function wantsCompression(baseUrl: string): boolean {
  return !isLoopbackHost(new URL(baseUrl).host);
}
