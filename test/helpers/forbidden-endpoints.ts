/**
 * The outbound policy's table (docs/trust.md): endpoints a server with tokens
 * must refuse, each with the range its refusal names, and public ones it must
 * let through. Shared by the unit test (the dispatcher's checks) and the
 * integration test (upload through the real API).
 */

/** [endpoint as a client may spell it, what the refusal must say]. */
export const FORBIDDEN: ReadonlyArray<readonly [string, RegExp]> = [
  // loopback, in every spelling the URL parser accepts
  ["http://127.0.0.1:8080", /loopback address/],
  ["http://127.0.0.2", /loopback address/],
  ["http://127.1", /loopback address/],
  ["http://2130706433/", /loopback address/], // decimal
  ["http://0x7f.1/", /loopback address/], // hex
  ["http://0x7f000001", /loopback address/],
  ["http://017700000001/", /loopback address/], // octal
  ["http://0177.0.0.1", /loopback address/],
  ["http://127.0.0.1.", /loopback address/], // trailing dot
  ["http://[::1]:8080", /loopback address/],
  ["http://[0:0:0:0:0:0:0:1]", /loopback address/],
  ["http://[::ffff:127.0.0.1]:8080", /loopback address \(in its IPv4-mapped IPv6 form\)/],
  ["http://[::ffff:7f00:1]", /loopback address \(in its IPv4-mapped/],
  ["http://[0:0:0:0:0:ffff:127.0.0.1]", /loopback address \(in its IPv4-mapped/],
  ["http://[::127.0.0.1]", /loopback address \(in its IPv4-compatible/],
  ["http://[64:ff9b::127.0.0.1]", /loopback address \(in its NAT64/],
  ["http://[::ffff:0:127.0.0.1]", /loopback address \(in its IPv4-translated/],
  ["http://[2002:7f00:1::1]", /loopback address \(in its 6to4/],
  ["http://localhost:8080", /loopback name/],
  ["http://LOCALHOST./", /loopback name/],
  ["http://api.localhost", /loopback name/],
  // unspecified
  ["http://0.0.0.0:8080", /unspecified address/],
  ["http://0", /unspecified address/],
  ["http://[::]:8080", /unspecified address/],
  ["http://[::ffff:0.0.0.0]", /unspecified address \(in its IPv4-mapped/],
  // private, unique local, carrier-grade NAT, link-local
  ["http://10.1.2.3", /private \(RFC 1918\) address/],
  ["http://172.16.0.1", /private \(RFC 1918\) address/],
  ["http://172.31.255.255", /private \(RFC 1918\) address/],
  ["http://192.168.1.1:11434", /private \(RFC 1918\) address/],
  ["http://[::ffff:10.0.0.1]", /private \(RFC 1918\) address \(in its IPv4-mapped/],
  ["http://[64:ff9b::c0a8:101]", /private \(RFC 1918\) address \(in its NAT64/],
  ["http://[fd12:3456::1]", /unique local address/],
  ["http://[fc00::1]", /unique local address/],
  ["http://100.64.0.1", /carrier-grade NAT address/],
  ["http://100.127.255.254", /carrier-grade NAT address/],
  ["http://169.254.1.1", /link-local address/],
  ["http://[fe80::1]", /link-local address/],
  ["http://[::ffff:169.254.1.1]", /link-local address \(in its IPv4-mapped/],
  // cloud metadata services, in the spellings the issue names and more
  ["http://169.254.169.254/latest/meta-data", /cloud metadata address/],
  ["http://2852039166", /cloud metadata address/], // 169.254.169.254 in decimal
  ["http://0xa9fea9fe", /cloud metadata address/],
  ["http://169.254.170.2", /cloud metadata address/],
  ["http://[fd00:ec2::254]", /cloud metadata address/],
  ["http://100.100.100.200", /cloud metadata address/],
  ["http://168.63.129.16", /cloud metadata address/],
  ["http://[::169.254.169.254]", /cloud metadata address \(in its IPv4-compatible/],
  ["http://[64:ff9b::a9fe:a9fe]", /cloud metadata address \(in its NAT64/],
  ["http://[::ffff:a9fe:a9fe]", /cloud metadata address \(in its IPv4-mapped/],
  ["http://metadata.google.internal/computeMetadata/v1", /cloud metadata name/],
  ["http://metadata", /cloud metadata name/],
  // other addresses that are not public unicast
  ["http://224.0.0.1", /special-purpose address/],
  ["http://255.255.255.255", /special-purpose address/],
  ["http://198.18.0.1", /special-purpose address/],
  ["http://[ff02::1]", /special-purpose address/],
];

/** Public endpoints, some right beside a forbidden range: never refused. */
export const PUBLIC: readonly string[] = [
  "https://api.openai.com",
  "https://api.example.com:8443",
  "http://8.8.8.8",
  "http://172.32.0.1",
  "http://100.128.0.1",
  "http://169.255.0.1",
  "http://11.0.0.1",
  "http://[2001:4860:4860::8888]",
  "http://[64:ff9b::808:808]", // NAT64 of 8.8.8.8
  "http://[::ffff:8.8.8.8]",
  "http://[2002:808:808::1]", // 6to4 of 8.8.8.8
  "http://metadata.example.com",
  "http://localhost.example.com",
];
