/**
 * The network a request comes from, for limits and for what one requester may displace: an IPv4
 * address as it is, an IPv6 address by its /64 — the prefix one subscriber or site is given (RFC
 * 6177 §3, RFC 7934 §6), inside which a single host can use any of 2^64 addresses (RFC 4941
 * temporary addresses, RFC 8981). An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is its IPv4 address.
 */
import { isIPv4, isIPv6 } from 'node:net';

/** `a.b.c.d`, or the /64 of an IPv6 address as `x:x:x:x::/64` (lowercase, no leading zeros); anything else unchanged. */
export function addressGroup(ip: string | null | undefined): string {
  if (!ip) return '';
  if (isIPv4(ip)) return ip;
  if (!isIPv6(ip)) return ip;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped && isIPv4(mapped[1]!)) return mapped[1]!;
  return `${expandIPv6(ip).slice(0, 4).join(':')}::/64`;
}

/** The eight 16-bit groups of an IPv6 address (zone id dropped; an embedded IPv4 tail converted). */
function expandIPv6(ip: string): string[] {
  let s = ip.split('%')[0]!.toLowerCase();
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const [a, b, c, d] = v4[1]!.split('.').map(Number) as [number, number, number, number];
    s = s.slice(0, -v4[1]!.length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = s.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const zeros = tail === undefined ? [] : Array<string>(8 - h.length - t.length).fill('0');
  return [...h, ...zeros, ...t].map((g) => parseInt(g, 16).toString(16));
}
