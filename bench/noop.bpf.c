/* SPDX-License-Identifier: GPL-2.0 */
/* noop.bpf.c: the cheapest XDP program (baseline for bench/fastpath.py). */
int xdp_noop(struct xdp_md *ctx)
{
	return XDP_PASS;
}
