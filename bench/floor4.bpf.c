/* SPDX-License-Identifier: GPL-2.0 */
/* floor4.bpf.c: the minimal IPv4 floor of issue 17: Ethernet/IPv4/UDP parse, a 13-byte 5-tuple key and one LRU
 * lookup (insert on a miss). No VLAN, no IPv6, no bidirectional key: what a classifier that did only IPv4 would pay,
 * beside floor.bpf.c's 40-byte key. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/in.h>

struct floor4_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
} __attribute__((packed)); /* 13 bytes */

struct floor4_val {
	__u64 pkts;
	__u64 bytes;
};

BPF_F_TABLE("lru_hash", struct floor4_key, struct floor4_val, flows4, 65536, 0);

int xdp_floor4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp;
	struct floor4_key key;
	struct floor4_val *v;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;
	key.saddr = ip->saddr;
	key.daddr = ip->daddr;
	key.sport = udp->source;
	key.dport = udp->dest;
	key.proto = ip->protocol;
	v = flows4.lookup(&key);
	if (!v) {
		struct floor4_val nv = {1, data_end - data};

		flows4.insert(&key, &nv);
		return XDP_PASS;
	}
	v->pkts++;
	v->bytes += data_end - data;
	return XDP_PASS;
}
