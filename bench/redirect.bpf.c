/* SPDX-License-Identifier: GPL-2.0 */
/* redirect.bpf.c: forward every frame to OUT_IFINDEX (bench/live.py's NIC-like feed: the measured veth then receives
 * xdp_frames with XDP headroom, as a NIC driver hands them over, instead of AF_PACKET skbs it must copy first). */
#ifndef OUT_IFINDEX
#error "OUT_IFINDEX must be set"
#endif
int xdp_fwd(struct xdp_md *ctx)
{
	return bpf_redirect(OUT_IFINDEX, 0);
}
