/* SPDX-License-Identifier: GPL-2.0 */
/* fwmark.bpf.c: TC ingress (clsact, direct action) half of skyguard's firewall marks.
 *
 * The XDP program puts a struct sg_mark_meta in front of each passed packet whose class has a mark (policy
 * `[class.NAME] fwmark`); the kernel keeps XDP metadata in the skb it builds, and this program turns it into
 * skb->mark, changing only the bits under the mask so that other users of the mark's other bits keep theirs.
 * Never drops, never changes the packet: every packet continues (TC_ACT_OK).
 */
#include "skyguard.h"

int tc_skyguard_mark(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	struct sg_mark_meta *m = (void *)(long)skb->data_meta;

	if ((void *)(m + 1) > data || m->magic != SG_MARK_MAGIC)
		return 0; /* TC_ACT_OK: no mark for this packet */
	skb->mark = (skb->mark & ~m->mask) | (m->mark & m->mask);
	return 0;
}
