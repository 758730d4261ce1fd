/* SPDX-License-Identifier: GPL-2.0 */
/* floor.bpf.c: skyguard's parsing plus one LRU lookup/insert and nothing else: the floor any flow classifier pays. */
#include "skyguard.h"
#include "parsing.h"
#include "flow.h"

/* flows: same key/value as skyguard's flow table */
BPF_F_TABLE("lru_hash", struct sg_flow_key, struct sg_flow, flows, SG_FLOWS_MAX, 0);

int xdp_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct sg_pkt pk = {};
	struct sg_flow_key key = {};
	struct sg_flow *f;
	__u8 dir;

	if (sg_parse(data, data_end, &pk) != 0)
		return XDP_PASS;
	dir = sg_flow_key(&pk, &key) & 1;
	f = flows.lookup(&key);
	if (!f) {
		struct sg_flow nf = {};

		flows.insert(&key, &nf);
		return XDP_PASS;
	}
	f->pkts[dir]++;
	return XDP_PASS;
}
