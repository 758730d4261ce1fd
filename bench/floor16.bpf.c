/* SPDX-License-Identifier: GPL-2.0 */
/* floor16.bpf.c: floor.bpf.c with IPv4 flows in a table of their own under a compact 16-byte key: skyguard's parsing
 * and bidirectional key, one LRU lookup (insert on a miss). It measures what issue 17's "compact IPv4 key in its own
 * table" would leave of the gap between skyguard's floor (40-byte key) and the minimal IPv4 floor (floor4.bpf.c):
 * the parse and the key's order stay skyguard's, only the key's size changes. */
#include "skyguard.h"
#include "parsing.h"
#include "flow.h"

/* An IPv4 flow's key: the addresses as on the wire, lower (address, port) endpoint first, as in struct sg_flow_key. */
struct floor16_key {
	__be32 lo_addr;
	__be32 hi_addr;
	__u16 lo_port;
	__u16 hi_port;
	__u16 vlan;
	__u8 proto;
	__u8 _pad;
}; /* 16 bytes */

/* flows: IPv6 flows, same key/value as skyguard's flow table */
BPF_F_TABLE("lru_hash", struct sg_flow_key, struct sg_flow, flows, SG_FLOWS_MAX, 0);
/* flows4: IPv4 flows under the compact key, skyguard's flow value */
BPF_F_TABLE("lru_hash", struct floor16_key, struct sg_flow, flows4, SG_FLOWS_MAX, 0);

/* The compact key of an IPv4 packet, in sg_flow_key's order; returns dir (0: the source is the lo endpoint). */
static __always_inline __u8 floor16_key(const struct sg_pkt *pk, struct floor16_key *k)
{
	__u32 a = bpf_ntohl(pk->saddr4), b = bpf_ntohl(pk->daddr4);
	int c = a < b ? -1 : (a > b ? 1 : 0);

	if (c == 0)
		c = pk->sport < pk->dport ? -1 : (pk->sport > pk->dport ? 1 : 0);
	k->vlan = pk->vlan;
	k->proto = pk->proto;
	k->_pad = 0;
	if (c <= 0) {
		k->lo_addr = pk->saddr4;
		k->hi_addr = pk->daddr4;
		k->lo_port = pk->sport;
		k->hi_port = pk->dport;
		return 0;
	}
	k->lo_addr = pk->daddr4;
	k->hi_addr = pk->saddr4;
	k->lo_port = pk->dport;
	k->hi_port = pk->sport;
	return 1;
}

int xdp_floor16(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct sg_pkt pk = {};
	struct sg_flow *f;
	__u8 dir;

	if (sg_parse(data, data_end, &pk) != 0)
		return XDP_PASS;
	if (!pk.v6) {
		struct floor16_key k4 = {};

		dir = floor16_key(&pk, &k4) & 1;
		f = flows4.lookup(&k4);
		if (!f) {
			struct sg_flow nf = {};

			flows4.insert(&k4, &nf);
			return XDP_PASS;
		}
	} else {
		struct sg_flow_key key = {};

		dir = sg_flow_key(&pk, &key) & 1;
		f = flows.lookup(&key);
		if (!f) {
			struct sg_flow nf = {};

			flows.insert(&key, &nf);
			return XDP_PASS;
		}
	}
	f->pkts[dir]++;
	return XDP_PASS;
}
