/* SPDX-License-Identifier: GPL-2.0 */
/* clock.bpf.c: the loader's clock probe (never attached). Run through BPF_PROG_TEST_RUN, it writes the kernel's
 * jiffies and the coarse monotonic clock (both advanced by the same tick) into the first 16 bytes of the frame: two
 * runs a few ticks apart give the tick length and the offset that turn jiffies into CLOCK_MONOTONIC ns, which
 * skyguard.bpf.c then reads with one inlined load instead of a helper call (SG_TICK_NS, SG_CLOCK_OFF). */

int xdp_clock(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 *p = data;

	if ((void *)(p + 2) > data_end)
		return XDP_ABORTED;
	p[0] = bpf_jiffies64();
	p[1] = bpf_ktime_get_coarse_ns();
	return XDP_PASS;
}
