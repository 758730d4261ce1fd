/* SPDX-License-Identifier: GPL-2.0 */
/* batch_noop.bpf.c: the ceiling of skyguard replay's batches (bench/peer.py). It walks a batch exactly as the replay
 * build does (struct sg_batch in bpf/skyguard.h: head back, tail cut, metadata, tail call to itself) and does nothing
 * with the packets: what is left of a replay's cost when the program and the slow path cost nothing. */
#include "skyguard.h"

BPF_RINGBUF_OUTPUT(events, 1);
BPF_F_TABLE("array", u32, struct sg_batch, batch, 1, BPF_F_MMAPABLE);
BPF_PROG_ARRAY(replay_next, 1);

/* as bpf/skyguard.bpf.c's */
static __always_inline __u32 sg_bidx(__u32 i)
{
	asm volatile("" : "+r"(i));
	return i & (SG_BATCH_MAX - 1);
}

int xdp_batch_noop(struct xdp_md *ctx)
{
	__u32 zero = 0, i, len, prev;
	struct sg_batch *b = batch.lookup(&zero);
	struct sg_meta *m;

	if (!b || b->n < 2)
		return XDP_PASS;
	if (!b->done && b->skip && bpf_xdp_adjust_head(ctx, b->skip & 0xffff))
		return XDP_ABORTED;
	i = b->done;
	if (i >= SG_BATCH_MAX || i >= b->n)
		return XDP_PASS;
	b->pkt[sg_bidx(i)].verdict = XDP_PASS;
	b->done = ++i;
	if (i >= SG_BATCH_MAX || i >= b->n)
		return XDP_PASS;
	len = (b->pkt[sg_bidx(i)].len & 0xffff) + SG_BATCH_GAP;
	prev = (b->pkt[sg_bidx(i - 1)].len & 0xffff) + SG_BATCH_GAP;
	if (bpf_xdp_adjust_head(ctx, -(int)len) || bpf_xdp_adjust_tail(ctx, -(int)prev))
		return XDP_PASS;
	m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > (void *)(long)ctx->data)
		return XDP_PASS;
	m->ts_ns = b->pkt[sg_bidx(i)].ts_ns;
	replay_next.call(ctx, 0);
	return XDP_PASS;
}
