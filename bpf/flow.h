/* SPDX-License-Identifier: GPL-2.0 */
/* flow.h: the bidirectional flow key (lower (address, port) endpoint first) and private flow-state helpers. */
#ifndef SKYGUARD_FLOW_H
#define SKYGUARD_FLOW_H

#include "skyguard.h"
#include "parsing.h"

#define SG_PREV_B4(f, d) ((f)->prev_b4[(d) & 1])
/* per-packet scratch bits SG_PK_* (signatures.h) live in flow.scratch */
#define SG_PKF(f) ((f)->scratch)

/* Compare two big-endian 64-bit halves as memcmp would. */
static __always_inline int sg_cmp_be64(__u64 a, __u64 b)
{
	a = __builtin_bswap64(a);
	b = __builtin_bswap64(b);
	return a < b ? -1 : (a > b ? 1 : 0);
}

/* Fill *key from the packet; returns dir (0 when the source is the lo endpoint, ties included). */
static __always_inline __u8 sg_flow_key(const struct sg_pkt *pk, struct sg_flow_key *key)
{
	__u64 s[2], d[2];
	int c;

	if (pk->v6) {
		__builtin_memcpy(s, &pk->saddr6, 16);
		__builtin_memcpy(d, &pk->daddr6, 16);
		c = sg_cmp_be64(s[0], d[0]);
		if (c == 0)
			c = sg_cmp_be64(s[1], d[1]);
	} else {
		__u32 a = bpf_ntohl(pk->saddr4), b = bpf_ntohl(pk->daddr4);

		s[0] = d[0] = 0;
		s[1] = ((__u64)pk->saddr4 << 32) | 0xffff0000ULL;
		d[1] = ((__u64)pk->daddr4 << 32) | 0xffff0000ULL;
		c = a < b ? -1 : (a > b ? 1 : 0);
	}
	if (c == 0)
		c = pk->sport < pk->dport ? -1 : (pk->sport > pk->dport ? 1 : 0);
	key->vlan = pk->vlan;
	key->proto = pk->proto;
	key->_pad = 0;
	if (c <= 0) {
		__builtin_memcpy(key->lo_addr, s, 16);
		__builtin_memcpy(key->hi_addr, d, 16);
		key->lo_port = pk->sport;
		key->hi_port = pk->dport;
		return 0;
	}
	__builtin_memcpy(key->lo_addr, d, 16);
	__builtin_memcpy(key->hi_addr, s, 16);
	key->lo_port = pk->dport;
	key->hi_port = pk->sport;
	return 1;
}

/* The compact key of an IPv4 packet: sg_flow_key's order and fields without the IPv4-mapped prefix. Returns dir. */
static __always_inline __u8 sg_flow_key4(const struct sg_pkt *pk, struct sg_flow_key4 *k)
{
	__u32 a = bpf_ntohl(pk->saddr4), b = bpf_ntohl(pk->daddr4);
	int c = a < b ? -1 : (a > b ? 1 : 0);

	if (c == 0)
		c = pk->sport < pk->dport ? -1 : (pk->sport > pk->dport ? 1 : 0);
	k->vlan = pk->vlan;
	k->proto = pk->proto;
	k->_pad = 0;
	if (c <= 0) {
		__builtin_memcpy(k->lo_addr, &pk->saddr4, 4);
		__builtin_memcpy(k->hi_addr, &pk->daddr4, 4);
		k->lo_port = pk->sport;
		k->hi_port = pk->dport;
		return 0;
	}
	__builtin_memcpy(k->lo_addr, &pk->daddr4, 4);
	__builtin_memcpy(k->hi_addr, &pk->saddr4, 4);
	k->lo_port = pk->dport;
	k->hi_port = pk->sport;
	return 1;
}

/* A key whose two addresses are IPv4-mapped (::ffff:a.b.c.d) in compact form: returns 1 with *k4 filled, else 0. */
static __always_inline int sg_key4_of(const struct sg_flow_key *k, struct sg_flow_key4 *k4)
{
	__u64 lo0, hi0;
	__u32 lo1, hi1;

	__builtin_memcpy(&lo0, k->lo_addr, 8);
	__builtin_memcpy(&hi0, k->hi_addr, 8);
	__builtin_memcpy(&lo1, &k->lo_addr[8], 4);
	__builtin_memcpy(&hi1, &k->hi_addr[8], 4);
	if (lo0 || hi0 || lo1 != bpf_htonl(0xffff) || hi1 != bpf_htonl(0xffff))
		return 0;
	__builtin_memcpy(k4->lo_addr, &k->lo_addr[12], 4);
	__builtin_memcpy(k4->hi_addr, &k->hi_addr[12], 4);
	k4->lo_port = k->lo_port;
	k4->hi_port = k->hi_port;
	k4->vlan = k->vlan;
	k4->proto = k->proto;
	k4->_pad = 0;
	return 1;
}

#endif /* SKYGUARD_FLOW_H */
