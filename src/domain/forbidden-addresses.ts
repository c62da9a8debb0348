/**
 * Addresses a shared server never sends to unless its allow-list names the
 * host (docs/trust.md, "Outbound policy"): loopback, unspecified, private,
 * carrier-grade NAT, link-local, unique-local, other special-purpose ranges,
 * the cloud metadata addresses, the host's own addresses, and every IPv6 form
 * that carries one of those IPv4 addresses (mapped, compatible, NAT64, SIIT,
 * 6to4). Pure: ranges are matched with node's `net.BlockList`, never by
 * comparing strings.
 */
import { BlockList, isIP } from "node:net";

interface Rule {
  /** How a refusal names the range: "<ip> is <what>". */
  what: string;
  v4: readonly string[];
  v6: readonly string[];
}

/** Checked in order: the first rule that matches names the refusal (metadata before link-local). */
const RULES: readonly Rule[] = [
  {
    what: "a cloud metadata address",
    v4: [
      "169.254.169.254/32", // AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack
      "169.254.170.2/32", // AWS ECS task credentials
      "169.254.170.23/32", // AWS EKS pod identity
      "169.254.0.23/32", // Tencent Cloud
      "100.100.100.200/32", // Alibaba Cloud
      "168.63.129.16/32", // Azure WireServer (a public address: no range rule covers it)
      "192.0.0.192/32", // Oracle Cloud Classic
    ],
    v6: ["fd00:ec2::254/128", "fd00:ec2::23/128"], // AWS IMDS and Route 53 resolver
  },
  { what: "a loopback address", v4: ["127.0.0.0/8"], v6: ["::1/128"] },
  { what: "an unspecified address", v4: ["0.0.0.0/8"], v6: ["::/128"] },
  {
    what: "a private (RFC 1918) address",
    v4: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
    v6: [],
  },
  { what: "a carrier-grade NAT address", v4: ["100.64.0.0/10"], v6: [] },
  { what: "a link-local address", v4: ["169.254.0.0/16"], v6: ["fe80::/10"] },
  { what: "a unique local address", v4: [], v6: ["fc00::/7", "fec0::/10"] },
  {
    what: "a special-purpose address (not public unicast)",
    // IETF protocol assignments, benchmarking, multicast, reserved and broadcast;
    // IPv6 multicast, discard-only, NAT64 local-use (RFC 8215).
    v4: ["192.0.0.0/24", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4"],
    v6: ["ff00::/8", "100::/64", "64:ff9b:1::/48"],
  },
];

/** IPv6 prefixes whose last 32 bits are an IPv4 address: [name, prefix text]. */
const V4_IN_LAST_32: ReadonlyArray<readonly [string, string]> = [
  ["IPv4-mapped", "::ffff:"],
  ["IPv4-compatible", "::"],
  ["NAT64", "64:ff9b::"],
  ["IPv4-translated", "::ffff:0:"],
];
const FORMS: ReadonlyArray<readonly [string, BlockList]> = [
  ...V4_IN_LAST_32.map(([name, prefix]): [string, BlockList] => [
    name,
    subnets([[`${prefix}0.0.0.0`, 96]], "ipv6"),
  ]),
  ["6to4", subnets([["2002::", 16]], "ipv6")],
];

function subnets(list: ReadonlyArray<readonly [string, number]>, type: "ipv4" | "ipv6") {
  const b = new BlockList();
  for (const [net, prefix] of list) b.addSubnet(net, prefix, type);
  return b;
}

function cidr(text: string): [string, number] {
  const [net, prefix] = text.split("/");
  return [net!, Number(prefix)];
}

/** `a.b.c.d` as the two hex groups of a 6to4 prefix (2002:AABB:CCDD::/48). */
function hexGroups(v4: string): string {
  const [a, b, c, d] = v4.split(".").map(Number) as [number, number, number, number];
  return `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
}

/** The IPv6 subnets that carry the IPv4 subnet `net/prefix` in one of the FORMS. */
function embedded(net: string, prefix: number): Array<[string, number]> {
  return [
    ...V4_IN_LAST_32.map(([, p]): [string, number] => [`${p}${net}`, 96 + prefix]),
    [`2002:${hexGroups(net)}::`, 16 + prefix],
  ];
}

interface CompiledRule {
  what: string;
  v4: BlockList;
  v6: BlockList;
  /** The IPv6 forms of the rule's IPv4 subnets. */
  v4InV6: BlockList;
}

function compile(what: string, v4: readonly string[], v6: readonly string[]): CompiledRule {
  const v4Nets = v4.map(cidr);
  return {
    what,
    v4: subnets(v4Nets, "ipv4"),
    v6: subnets(v6.map(cidr), "ipv6"),
    v4InV6: subnets(
      v4Nets.flatMap(([n, p]) => embedded(n, p)),
      "ipv6",
    ),
  };
}

const COMPILED: readonly CompiledRule[] = RULES.map((r) => compile(r.what, r.v4, r.v6));

/**
 * The forbidden ranges plus one host's own addresses (a public address on an
 * interface reaches the services of the machine as surely as 127.0.0.1).
 */
export class ForbiddenAddresses {
  readonly #rules: readonly CompiledRule[];

  constructor(ownAddresses: readonly string[] = []) {
    const own = ownAddresses.map((a) => a.replace(/%.*$/, "")); // drop an IPv6 zone
    const v4 = own.filter((a) => isIP(a) === 4).map((a) => `${a}/32`);
    const v6 = own.filter((a) => isIP(a) === 6).map((a) => `${a}/128`);
    this.#rules = [...COMPILED, compile("an address of this host", v4, v6)];
  }

  /**
   * Why `ip` (an address literal, bracketed or not) is forbidden, as "is …",
   * or undefined when it is a public address (or not an address at all).
   */
  refusal(ip: string): string | undefined {
    const address = ip.replace(/^\[(.*)\]$/, "$1");
    const family = isIP(address);
    if (family === 0) return undefined;
    for (const rule of this.#rules) {
      if (family === 4 ? rule.v4.check(address, "ipv4") : rule.v6.check(address, "ipv6")) {
        return `is ${rule.what}`;
      }
      if (family === 6 && rule.v4InV6.check(address, "ipv6")) {
        const form = FORMS.find(([, b]) => b.check(address, "ipv6"))?.[0];
        return `is ${rule.what} (in its ${form} IPv6 form)`;
      }
    }
    return undefined;
  }
}
