/* SPDX-License-Identifier: GPL-2.0 */
/* floor16.bpf.c: floor.bpf.c with IPv4 flows in a table of their own under skyguard's compact 16-byte key (struct
 * sg_flow_key4, as in `flows4`): skyguard's parsing and key functions, one LRU lookup (insert on a miss). Beside the
 * minimal IPv4 floor (floor4.bpf.c) it shows what the parse and the key cost skyguard on the path of a settled IPv4
 * flow, without the per-packet duty (counters, clock, policy). */
#include "skyguard.h"
#include "parsing.h"
#include "flow.h"

/* flows: IPv6 flows, same key/value as skyguard's flow table */
BPF_F_TABLE("lru_hash", struct sg_flow_key, struct sg_flow, flows, SG_FLOWS_MAX, 0);
/* flows4: IPv4 flows under the compact key, skyguard's flow value */
BPF_F_TABLE("lru_hash", struct sg_flow_key4, struct sg_flow, flows4, SG_FLOWS_MAX, 0);

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
		struct sg_flow_key4 k4 = {};

		dir = sg_flow_key4(&pk, &k4) & 1;
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
