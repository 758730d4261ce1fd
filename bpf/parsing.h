/* SPDX-License-Identifier: GPL-2.0 */
/* parsing.h: cursor-advancing header parsers in the style of xdp-tools' parsing_helpers.h.
 *
 * Each parser checks `h + 1 > data_end` before reading, advances the cursor past its header and returns the next
 * protocol, or a negative SG_ST_ERR_* index when the packet is malformed. UAPI headers only.
 */
#ifndef SKYGUARD_PARSING_H
#define SKYGUARD_PARSING_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include "skyguard.h"

#ifndef SG_VLAN_MAX
#define SG_VLAN_MAX 2 /* 802.1ad + 802.1Q; one more tag is SG_ST_ERR_VLAN_DEPTH */
#endif

struct hdr_cursor {
	void *pos;
};

/* Offsets from the start of the frame never exceed this (Ethernet + 2 tags + IPv6 + 6 x 2 KiB extension headers). */
#define SG_OFF_MASK 0x3fff

/* Turn the cursor into data + (offset & SG_OFF_MASK), hiding its per-path constant offset from the verifier: every
 * parse path (VLAN depth, IPv4 options, each IPv6 extension header kind) then continues in one verifier state instead
 * of one per combination (3 VLAN depths x 3^6 extension chains would not verify). */
static __always_inline void sg_cursor_forget(struct hdr_cursor *nh, void *data)
{
	__u64 off = nh->pos - data;

	asm volatile("" : "+r"(off));
	off &= SG_OFF_MASK;
	nh->pos = data + off;
}

/* 802.1Q/802.1ad tag (not in the UAPI headers) */
struct sg_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* IPv6 fragment header (RFC 8200 4.5) */
struct sg_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | res | M */
	__be32 id;
};

/* What the parsers found: L3/L4 positions as packet pointers plus the fields the flow key needs. */
struct sg_pkt {
	void *l3;          /* IPv4 or IPv6 header (DSCP rewrite) */
	void *l4;          /* UDP/TCP header */
	void *pl;          /* L4 payload */
	__u32 plen;        /* L4 payload length (from the IP/UDP lengths, <= bytes present) */
	__u16 sport;       /* host order */
	__u16 dport;
	__u16 vlan;        /* outer tag id, 0 untagged */
	__u8 proto;        /* IPPROTO_UDP/TCP */
	__u8 v6;
	__u8 frag;         /* first fragment of a fragmented datagram: the UDP length may run past this fragment */
	__be32 saddr4;
	__be32 daddr4;
	struct in6_addr saddr6;
	struct in6_addr daddr6;
};

static __always_inline int sg_proto_is_vlan(__u16 h_proto)
{
	return h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD);
}

/* Ethernet + up to SG_VLAN_MAX tags. Returns the ethertype (network order) or -SG_ST_ERR_*. */
static __always_inline int sg_parse_eth(struct hdr_cursor *nh, void *data, void *data_end, __u16 *vlan)
{
	struct ethhdr *eth = nh->pos;
	__u16 h_proto;

	if ((void *)(eth + 1) > data_end)
		return -SG_ST_ERR_ETH;
	nh->pos = eth + 1;
	h_proto = eth->h_proto;
	*vlan = 0;

#pragma unroll
	for (int i = 0; i < SG_VLAN_MAX; i++) {
		struct sg_vlan_hdr *vh = nh->pos;

		if (!sg_proto_is_vlan(h_proto)) {
			sg_cursor_forget(nh, data);
			return h_proto;
		}
		if ((void *)(vh + 1) > data_end)
			return -SG_ST_ERR_VLAN;
		if (i == 0)
			*vlan = bpf_ntohs(vh->tci) & 0x0fff;
		h_proto = vh->encap_proto;
		nh->pos = vh + 1;
	}
	if (sg_proto_is_vlan(h_proto))
		return -SG_ST_ERR_VLAN_DEPTH;
	sg_cursor_forget(nh, data);
	return h_proto;
}

/* Where a frame in several buffers is reported: its whole length, and a counter of such frames (each may be 0). */
struct sg_frame {
	struct xdp_md *ctx; /* 0: the first buffer alone (the bench floor) */
	__u32 *len;         /* set to the whole frame's length */
	__u64 *count;       /* incremented */
};

/* A datagram that ends past data_end may go on in the frame's further buffers (a jumbo frame under a frags-aware
 * program: the headers are in the first buffer, the rest of the payload is not). The frame's whole length decides;
 * the helper is called only for such datagrams, and only here is anything written for them, so that ordinary frames
 * pay nothing (a flag tested after the parse cost the fast path 3 ns). Returns 1 when `end` is inside the frame. */
static __always_inline int sg_in_frame(struct sg_frame *fr, void *data, void *end)
{
	__u64 len;

	if (!fr->ctx)
		return 0;
	len = bpf_xdp_get_buff_len(fr->ctx);
	if ((__u64)(end - data) > len)
		return 0;
	if (fr->len)
		*fr->len = len;
	if (fr->count)
		(*fr->count)++;
	return 1;
}

/* IPv4 with any IHL. Returns the L4 protocol, SG_FRAG_NEXT for a non-first fragment, or -SG_ST_ERR_*.
 * *l3_end = end of the datagram (tot_len), which may be before data_end (Ethernet padding). */
#define SG_FRAG_NEXT 0x1000

static __always_inline int sg_parse_ip4(struct sg_frame *fr, struct hdr_cursor *nh, void *data, void *data_end,
					struct sg_pkt *pk, void **l3_end)
{
	struct iphdr *iph = nh->pos;
	__u32 hlen, tot;

	if ((void *)(iph + 1) > data_end)
		return -SG_ST_ERR_IP4;
	if (iph->version != 4)
		return -SG_ST_ERR_VERSION;
	hlen = iph->ihl * 4;
	if (hlen < sizeof(*iph))
		return -SG_ST_ERR_IP4_IHL;
	if (nh->pos + hlen > data_end)
		return -SG_ST_ERR_IP4_IHL;
	tot = bpf_ntohs(iph->tot_len);
	if (tot < hlen || (nh->pos + tot > data_end && !sg_in_frame(fr, data, nh->pos + tot)))
		return -SG_ST_ERR_IP4_LEN;
	pk->l3 = iph;
	pk->saddr4 = iph->saddr;
	pk->daddr4 = iph->daddr;
	*l3_end = nh->pos + tot;
	nh->pos += hlen;
	sg_cursor_forget(nh, data);
	if (iph->frag_off & bpf_htons(0x1fff))
		return SG_FRAG_NEXT;
	if (iph->frag_off & bpf_htons(0x2000)) /* MF with offset 0: the first fragment carries the ports */
		pk->frag = 1;
	return iph->protocol;
}

/* The IPv6 extension headers the walk steps over; anything else is the upper-layer protocol. */
static __always_inline int sg_ip6_ext_allowed(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING || nexthdr == IPPROTO_DSTOPTS ||
	       nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_AH;
}

/* IPv6 and a bounded walk over the allowlisted extension headers, each inside the datagram (payload_len: not in the
 * Ethernet padding). Returns the L4 protocol, SG_FRAG_NEXT, or -SG_ST_ERR_*. */
static __always_inline int sg_parse_ip6(struct sg_frame *fr, struct hdr_cursor *nh, void *data, void *data_end,
					struct sg_pkt *pk, void **l3_end)
{
	struct ipv6hdr *ip6h = nh->pos;
	__u8 nexthdr;

	if ((void *)(ip6h + 1) > data_end)
		return -SG_ST_ERR_IP6;
	if (ip6h->version != 6)
		return -SG_ST_ERR_VERSION;
	if ((void *)(ip6h + 1) + bpf_ntohs(ip6h->payload_len) > data_end &&
	    !sg_in_frame(fr, data, (void *)(ip6h + 1) + bpf_ntohs(ip6h->payload_len)))
		return -SG_ST_ERR_IP6;
	pk->l3 = ip6h;
	pk->v6 = 1;
	__builtin_memcpy(&pk->saddr6, &ip6h->saddr, sizeof(pk->saddr6));
	__builtin_memcpy(&pk->daddr6, &ip6h->daddr, sizeof(pk->daddr6));
	*l3_end = (void *)(ip6h + 1) + bpf_ntohs(ip6h->payload_len);
	nh->pos = ip6h + 1;
	sg_cursor_forget(nh, data);
	nexthdr = ip6h->nexthdr;

#pragma unroll
	for (int i = 0; i < SG_IP6_EXT_MAX; i++) {
		struct sg_frag_hdr *h = nh->pos; /* every allowlisted header is >= 8 bytes */
		__u32 len;

		if (!sg_ip6_ext_allowed(nexthdr))
			return nexthdr;
		if ((void *)(h + 1) > data_end || (void *)(h + 1) > *l3_end)
			return -SG_ST_ERR_IP6_EXT;
		if (nexthdr == IPPROTO_FRAGMENT) {
			if (h->frag_off & bpf_htons(0xfff8))
				return SG_FRAG_NEXT;
			if (h->frag_off & bpf_htons(0x0001)) /* M with offset 0: first fragment */
				pk->frag = 1;
			len = 8;
		} else if (nexthdr == IPPROTO_AH) {
			len = ((__u32)h->reserved + 2) * 4;
		} else {
			len = ((__u32)h->reserved + 1) * 8; /* hdrlen is the second byte */
		}
		if (nh->pos + len > data_end || nh->pos + len > *l3_end)
			return -SG_ST_ERR_IP6_EXT;
		nexthdr = h->nexthdr;
		nh->pos += len;
		sg_cursor_forget(nh, data);
	}
	if (sg_ip6_ext_allowed(nexthdr))
		return -SG_ST_ERR_IP6_DEPTH;
	return nexthdr;
}

/* UDP: header and length sanity. Returns 0 or -SG_ST_ERR_UDP. The first fragment of a fragmented datagram carries a
 * UDP length that covers the whole datagram: its payload is what this fragment holds (it is not malformed). */
static __always_inline int sg_parse_udp(struct hdr_cursor *nh, void *data_end, void *l3_end, struct sg_pkt *pk)
{
	struct udphdr *uh = nh->pos;
	__u32 ulen;

	if ((void *)(uh + 1) > data_end || (void *)(uh + 1) > l3_end)
		return -SG_ST_ERR_UDP;
	ulen = bpf_ntohs(uh->len);
	if (ulen < sizeof(*uh))
		return -SG_ST_ERR_UDP;
	if ((void *)uh + ulen > l3_end) {
		if (!pk->frag)
			return -SG_ST_ERR_UDP;
		ulen = (__u32)(l3_end - (void *)uh);
	}
	pk->l4 = uh;
	pk->sport = bpf_ntohs(uh->source);
	pk->dport = bpf_ntohs(uh->dest);
	pk->pl = uh + 1;
	pk->plen = ulen - sizeof(*uh);
	nh->pos = uh + 1;
	return 0;
}

/* TCP: header, data offset >= 5 and options present. Returns 0 or -SG_ST_ERR_TCP. */
static __always_inline int sg_parse_tcp(struct hdr_cursor *nh, void *data_end, void *l3_end, struct sg_pkt *pk)
{
	struct tcphdr *th = nh->pos;
	__u32 hlen;

	if ((void *)(th + 1) > data_end)
		return -SG_ST_ERR_TCP;
	hlen = th->doff * 4;
	if (hlen < sizeof(*th))
		return -SG_ST_ERR_TCP;
	if (nh->pos + hlen > data_end || nh->pos + hlen > l3_end)
		return -SG_ST_ERR_TCP;
	pk->l4 = th;
	pk->sport = bpf_ntohs(th->source);
	pk->dport = bpf_ntohs(th->dest);
	pk->pl = nh->pos + hlen;
	pk->plen = (__u32)(l3_end - (nh->pos + hlen));
	nh->pos += hlen;
	return 0;
}

/* Whole packet: Ethernet .. L4. Returns 0 with *pk filled (UDP/TCP), or a positive SG_ST_OUT_* index for packets
 * that are passed without a flow, or a negative SG_ST_ERR_* index. Headers are read from the first buffer only; with
 * fr->ctx, IP lengths are checked against the whole frame (see sg_in_frame). `only4` (a constant) leaves the IPv6
 * parse out: an IPv6 packet is then SG_ST_OUT_NON_IP. */
static __always_inline int sg_parse_frame_of(struct sg_frame *fr, void *data, void *data_end, struct sg_pkt *pk,
					     const int only4)
{
	struct hdr_cursor nh = { .pos = data };
	void *l3_end = data_end;
	int proto;

	proto = sg_parse_eth(&nh, data, data_end, &pk->vlan);
	if (proto < 0)
		return proto;
	if (proto == bpf_htons(ETH_P_IP))
		proto = sg_parse_ip4(fr, &nh, data, data_end, pk, &l3_end);
	else if (!only4 && proto == bpf_htons(ETH_P_IPV6))
		proto = sg_parse_ip6(fr, &nh, data, data_end, pk, &l3_end);
	else
		return SG_ST_OUT_NON_IP;
	if (proto < 0)
		return proto;
	if (proto == SG_FRAG_NEXT)
		return SG_ST_OUT_FRAGMENT;
	pk->proto = proto;
	if (proto == IPPROTO_UDP)
		return sg_parse_udp(&nh, data_end, l3_end, pk);
	if (proto == IPPROTO_TCP)
		return sg_parse_tcp(&nh, data_end, l3_end, pk);
	return SG_ST_OUT_OTHER_L4;
}

static __always_inline int sg_parse_frame(struct sg_frame *fr, void *data, void *data_end, struct sg_pkt *pk)
{
	return sg_parse_frame_of(fr, data, data_end, pk, 0);
}

/* The first buffer alone (the bench floor). */
static __always_inline int sg_parse(void *data, void *data_end, struct sg_pkt *pk)
{
	struct sg_frame fr = {};

	return sg_parse_frame(&fr, data, data_end, pk);
}

/* IPv4 alone, from the first buffer alone (the fast lane): 0 for a UDP/TCP packet, whose parse is then the same as
 * sg_parse_frame's; anything else is left, uncounted, to the full parse. */
static __always_inline int sg_parse4(void *data, void *data_end, struct sg_pkt *pk)
{
	struct sg_frame fr = {};

	return sg_parse_frame_of(&fr, data, data_end, pk, 1);
}

#endif /* SKYGUARD_PARSING_H */
