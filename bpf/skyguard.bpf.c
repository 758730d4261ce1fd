/* SPDX-License-Identifier: GPL-2.0 */
/* skyguard.bpf.c: XDP classifier that recognises Skype calls and enforces the policy of each flow's class.
 *
 * bcc dialect (BPF(src_file=...)); UAPI headers only. Per packet: parse (Eth, 2 VLAN tags, IPv4/IPv6 + extension
 * headers, UDP/TCP) -> bidirectional flow lookup (LRU) -> signatures while the flow is in its inspection window ->
 * action of the flow's class from the `policy` map. Every packet moves exactly one (verdict slot, action) pair of the
 * per-CPU `stats` entry, and lands in one outcome counter: the totals, the action, class and flow-table counters are
 * sums of pairs that userspace derives (bpf/skyguard.h).
 */
#include "skyguard.h"
#include "parsing.h"
#include "flow.h"
#include "signatures.h"

/* Maps are pinned under SG_PIN_PATH (a string cflag, e.g. "/sys/fs/bpf/skyguard") so a restarted daemon adopts them. */
#ifdef SG_PIN_PATH
#define SG_MAP(_type, _k, _v, _name, _max, _flags) \
	BPF_TABLE_PINNED7(_type, _k, _v, _name, _max, SG_PIN_PATH "/" #_name, _flags)
#else
#define SG_MAP(_type, _k, _v, _name, _max, _flags) BPF_F_TABLE(_type, _k, _v, _name, _max, _flags)
#endif

/* flows: bidirectional 5-tuple + VLAN -> per-flow counters, class and inspection state (settled IPv4 flows: flows4) */
SG_MAP("lru_hash", struct sg_flow_key, struct sg_flow, flows, SG_FLOWS_MAX, 0);
/* flows4: flows between two IPv4 addresses once settled (fast path only), under the compact key (sg_flow_key4) */
SG_MAP("lru_hash", struct sg_flow_key4, struct sg_flow, flows4, SG_FLOWS_MAX, 0);
/* policy: gen * SG_POL_SLOTS + class-or-slot -> action, dscp, log, opts (two generations for atomic reloads) */
SG_MAP("array", u32, struct sg_policy, policy, 2 * SG_POL_SLOTS, 0);
/* config: one entry; gen selects the active policy/LPM generation */
SG_MAP("array", u32, struct sg_config, config, 1, 0);
/* stats: per-CPU counters, one struct per CPU (one lookup per packet) */
SG_MAP("percpu_array", u32, struct sg_stats, stats, 1, 0);
/* pstn_v4: generation + IPv4 prefix -> PSTN gateway/SBC prefixes (policy and DNS-learned) */
SG_MAP("lpm_trie", struct sg_lpm4, struct sg_prefix, pstn_v4, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* pstn_v6: generation + IPv6 prefix -> PSTN gateway/SBC prefixes */
SG_MAP("lpm_trie", struct sg_lpm6, struct sg_prefix, pstn_v6, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* msmedia_v4: generation + IPv4 prefix -> Microsoft Skype/Teams media prefixes */
SG_MAP("lpm_trie", struct sg_lpm4, struct sg_prefix, msmedia_v4, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* msmedia_v6: generation + IPv6 prefix -> Microsoft Skype/Teams media prefixes */
SG_MAP("lpm_trie", struct sg_lpm6, struct sg_prefix, msmedia_v6, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* exempt_v4: generation + IPv4 prefix -> never classified or touched */
SG_MAP("lpm_trie", struct sg_lpm4, struct sg_prefix, exempt_v4, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* exempt_v6: generation + IPv6 prefix -> never classified or touched */
SG_MAP("lpm_trie", struct sg_lpm6, struct sg_prefix, exempt_v6, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* block_v4: generation + IPv4 prefix -> operator's manual blocks (always dropped) */
SG_MAP("lpm_trie", struct sg_lpm4, struct sg_prefix, block_v4, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* block_v6: generation + IPv6 prefix -> operator's manual blocks */
SG_MAP("lpm_trie", struct sg_lpm6, struct sg_prefix, block_v6, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* drmedia_v4: generation + IPv4 prefix -> Microsoft's Direct Routing media processors (SBC side of phone calls) */
SG_MAP("lpm_trie", struct sg_lpm4, struct sg_prefix, drmedia_v4, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* drmedia_v6: generation + IPv6 prefix -> Direct Routing media processors */
SG_MAP("lpm_trie", struct sg_lpm6, struct sg_prefix, drmedia_v6, SG_LPM_MAX, BPF_F_NO_PREALLOC);
/* qos: generation -> client port ranges and DSCP of each media kind (policy [qos]) */
SG_MAP("array", u32, struct sg_qos, qos, 2, 0);
/* endpoints: UDP endpoint (address, port, VLAN) proved Skype by a strong signature -> when, by what (LRU, TTL) */
SG_MAP("lru_hash", struct sg_ep_key, struct sg_ep, endpoints, SG_EP_MAX, 0);
/* fwmarks: gen * SG_POL_SLOTS + class -> firewall mark and mask (read only for slots whose policy says fwmark) */
SG_MAP("array", u32, struct sg_fwmark, fwmarks, 2 * SG_POL_SLOTS, 0);
/* chained: ifindex -> the foreign program chained on it and its attach flags (the daemon's record, for detach) */
SG_MAP("hash", u32, struct sg_chain, chained, SG_CHAIN_MAX, BPF_F_NO_PREALLOC);
#ifdef SG_XDP_CHAIN
/* chain: ifindex -> the XDP program that was attached before skyguard; it gets every packet skyguard passes */
SG_MAP("prog", u32, u32, chain, SG_CHAIN_MAX, 0);
#endif
/* events: ring buffer of classified/sample/dns/tls/http events for the daemon (never blocks: losses are counted) */
BPF_RINGBUF_OUTPUT(events, SG_RINGBUF_BYTES / 4096);
/* A replay reads the ring buffer after every run that left a record and never sleeps in epoll: the wake-up of a
 * poller (an irq_work, a self-interrupt that is dear under virtualisation) would be spent on nobody. */
#ifdef SG_META_CLOCK
#define SG_RB_FLAGS BPF_RB_NO_WAKEUP
#else
#define SG_RB_FLAGS 0
#endif
#ifdef SG_META_CLOCK
/* batch: a replay's packets of one test run and their verdicts (mmapped by offline/walk.c); see struct sg_batch */
BPF_F_TABLE("array", u32, struct sg_batch, batch, 1, BPF_F_MMAPABLE);
/* replay_next: this very program (the loader puts it there), tail-called for a batch's next packet */
BPF_PROG_ARRAY(replay_next, 1);
#endif
/* rcu_inner: the one map rcu_sync holds; nothing reads it */
BPF_ARRAY(rcu_inner, u32, 1);
/* rcu_sync: never read; a write returns once all running programs have ended (RCU), a reload's fence */
BPF_ARRAY_OF_MAPS(rcu_sync, "rcu_inner", 1);

_Static_assert(SG_ST_VERDICT_BASE + 2 * SG_VS_SLOTS * SG_NACTIONS <= SG_ST_MAX, "the verdict pairs fit sg_stats");

/* A flow's flag bits change from two sides: packets (here) and the daemon (xdp_verdict: block, exempt, its class). Both
 * change them with atomic ops on the aligned 64-bit word that holds flow.flags (bcc's target has 64-bit atomics only),
 * never with a plain read-modify-write of the byte, which could write back a bit the other side changed meanwhile. */
#define SG_FLAGS_OFF __builtin_offsetof(struct sg_flow, flags)
#define SG_FLAGS_SHIFT ((SG_FLAGS_OFF & 7) * 8)
_Static_assert(sizeof(((struct sg_flow *)0)->flags) == 1, "flags is one byte of its word");

static __always_inline __u64 *sg_flags_word(struct sg_flow *f)
{
	return (__u64 *)((void *)f + (SG_FLAGS_OFF & ~7));
}

static __always_inline void sg_flags_set(struct sg_flow *f, __u8 bits)
{
	__sync_fetch_and_or(sg_flags_word(f), (__u64)bits << SG_FLAGS_SHIFT);
}

static __always_inline void sg_flags_clear(struct sg_flow *f, __u8 bits)
{
	__sync_fetch_and_and(sg_flags_word(f), ~((__u64)bits << SG_FLAGS_SHIFT));
}

/* The packet's (verdict slot, action) pair: its packet counter and the byte counter beside it. Every caller passes a
 * constant action and a slot it has bounded (a constant, or a class clamped below SG_NCLASSES), so this is one index
 * computation and two increments, and the verifier sees the index inside the struct. */
static __always_inline void sg_count_verdict(struct sg_stats *st, __u32 slot, __u32 act, __u32 len)
{
	__u64 *v = &st->c[SG_ST_VERDICT_BASE + 2 * (slot * SG_NACTIONS + act)];

	v[0]++;
	v[1] += len;
}

#define SG_LPM4_BITS (8 + 32)
#define SG_LPM6_BITS (8 + 128)

/* What the per-flow helpers need besides the flow: the packet's context, clock and counters. */
struct sg_run {
	struct xdp_md *ctx;
	void *data;
	void *data_end;
	struct sg_stats *st;
	struct sg_flow_key *key;   /* the flow's key; NULL for a flow served from flows4 */
	struct sg_flow_key4 *key4; /* its compact key, for a flow served from flows4 (NULL otherwise) */
	__u64 now;
	__u32 l3_off; /* IP header offset from data (masked: see SG_OFF_MASK) */
	__u32 pl_off; /* L4 payload offset from data */
	__u32 len;    /* the frame's length: the first buffer's, all buffers' when the IP datagram runs past it */
	__u8 dir;
	__u8 v6;
	__u8 meta_clock; /* `now` came from XDP metadata (replay): exact, use it for events too */
	__u32 place;     /* the packet's place in its capture, from the same metadata (0 live) */
};


/* ---- LPM lookups (flow creation only) ----
 * bcc rewrites map calls by the map's name and refuses them inside macros, so the map is picked by a switch on a
 * constant: after inlining, each caller keeps only its own map's lookups. */
#define SG_LPM_EXEMPT  0
#define SG_LPM_BLOCK   1
#define SG_LPM_PSTN    2
#define SG_LPM_MSMEDIA 3
#define SG_LPM_DRMEDIA 4

static __always_inline int sg_lpm_hit4(int which, struct sg_lpm4 *k)
{
	switch (which) {
	case SG_LPM_EXEMPT:
		return exempt_v4.lookup(k) != 0;
	case SG_LPM_BLOCK:
		return block_v4.lookup(k) != 0;
	case SG_LPM_PSTN:
		return pstn_v4.lookup(k) != 0;
	case SG_LPM_DRMEDIA:
		return drmedia_v4.lookup(k) != 0;
	default:
		return msmedia_v4.lookup(k) != 0;
	}
}

static __always_inline int sg_lpm_hit6(int which, struct sg_lpm6 *k)
{
	switch (which) {
	case SG_LPM_EXEMPT:
		return exempt_v6.lookup(k) != 0;
	case SG_LPM_BLOCK:
		return block_v6.lookup(k) != 0;
	case SG_LPM_PSTN:
		return pstn_v6.lookup(k) != 0;
	case SG_LPM_DRMEDIA:
		return drmedia_v6.lookup(k) != 0;
	default:
		return msmedia_v6.lookup(k) != 0;
	}
}

/* Is either endpoint of the packet in the `which` prefixes of generation `gen`? */
static __always_inline int sg_in_lpm(struct sg_pkt *pk, __u8 gen, int which)
{
	if (pk->v6) {
		struct sg_lpm6 k6 = { .prefixlen = SG_LPM6_BITS, .gen = gen };

		__builtin_memcpy(k6.addr, &pk->saddr6, 16);
		if (sg_lpm_hit6(which, &k6))
			return 1;
		__builtin_memcpy(k6.addr, &pk->daddr6, 16);
		return sg_lpm_hit6(which, &k6);
	}
	struct sg_lpm4 k4 = { .prefixlen = SG_LPM4_BITS, .gen = gen };

	__builtin_memcpy(k4.addr, &pk->saddr4, 4);
	if (sg_lpm_hit4(which, &k4))
		return 1;
	__builtin_memcpy(k4.addr, &pk->daddr4, 4);
	return sg_lpm_hit4(which, &k4);
}

/* Is the packet's source (src = 1) or destination address in the `which` prefixes of generation `gen`? */
static __always_inline int sg_addr_in_lpm(struct sg_pkt *pk, __u8 gen, int which, int src)
{
	if (pk->v6) {
		struct sg_lpm6 k6 = { .prefixlen = SG_LPM6_BITS, .gen = gen };

		__builtin_memcpy(k6.addr, src ? (void *)&pk->saddr6 : (void *)&pk->daddr6, 16);
		return sg_lpm_hit6(which, &k6);
	}
	struct sg_lpm4 k4 = { .prefixlen = SG_LPM4_BITS, .gen = gen };

	__builtin_memcpy(k4.addr, src ? (void *)&pk->saddr4 : (void *)&pk->daddr4, 4);
	return sg_lpm_hit4(which, &k4);
}

#define sg_in_exempt(pk, gen)  sg_in_lpm(pk, gen, SG_LPM_EXEMPT)
#define sg_in_block(pk, gen)   sg_in_lpm(pk, gen, SG_LPM_BLOCK)
#define sg_in_pstn(pk, gen)    sg_in_lpm(pk, gen, SG_LPM_PSTN)
#define sg_in_msmedia(pk, gen) sg_in_lpm(pk, gen, SG_LPM_MSMEDIA)

/* The active policy generation. Each packet reads it exactly once and uses that one value for everything it looks
 * up in the policy: a new flow's prefixes and the action slot. A reload that flips it while the packet runs then
 * gives the packet the old policy or the new one, never the prefixes of one with the actions of the other. The fast
 * path reads it only after the flow lookup, so that nothing keeps it in a register across the lookup. */
static __always_inline __u32 sg_gen(void)
{
	__u32 zero = 0;
	struct sg_config *cfg = config.lookup(&zero);

	return cfg ? (cfg->gen & 1) : 0;
}

/* ---- the flow clock ----
 * Flows need ageing resolution, not precision: the live build reads jiffies (the verifier inlines bpf_jiffies64 into
 * one load) and scales it with the tick length and offset the loader measured with clock.bpf.c, which saves the
 * helper call of bpf_ktime_get_coarse_ns on every packet. The replay build
 * (SG_META_CLOCK) takes the capture's timestamp from the XDP metadata when a replay hands one over. */
static __always_inline __u64 sg_clock(struct xdp_md *ctx, void *data, __u8 *from_meta, __u32 *place)
{
#ifdef SG_META_CLOCK
	struct sg_meta *meta = (void *)(long)ctx->data_meta;

	if ((void *)(meta + 1) <= data && meta->magic == SG_META_MAGIC) {
		*from_meta = 1;
		*place = meta->place;
		return meta->ts_ns;
	}
#endif
	*from_meta = 0;
#ifdef SG_TICK_NS
	return bpf_jiffies64() * SG_TICK_NS + (__u64)(SG_CLOCK_OFF);
#else
	return bpf_ktime_get_coarse_ns(); /* a loader that did not measure the tick */
#endif
}

/* ---- events ---- */
/* A record of `size` bytes went into the ring buffer, one the daemon acts on by writing into the kernel only when
 * `writes`: then a replay's batch ends after this packet, for the slow path to act on it before the next one. Any
 * other may wait past it, across batches, until a quarter of the ring buffer waits (the walker takes the records then,
 * and sets `waiting` to what it left): no record is lost to a full ring. */
static __always_inline void sg_replay_record(__u32 size, int writes)
{
#ifdef SG_META_CLOCK
	__u32 zero = 0;
	struct sg_batch *b = batch.lookup(&zero);

	if (!b)
		return;
	b->waiting += (size + 8 + 7) & ~7; /* with its ring buffer header, rounded up to 8 */
	b->stop |= writes | (b->waiting > SG_RINGBUF_BYTES / 4); /* no branch: fewer states for the verifier */
#endif
}

static __always_inline void sg_ev_hdr(struct sg_ev_hdr *h, __u8 type, struct sg_run *r)
{
	h->type = type;
	h->dir = r->dir;
	h->_pad = 0;
	h->place = r->place;
	/* events need the exact time (the slow path measures packet intervals of a few ms); the coarse clock of the
	 * fast path has jiffy resolution */
	h->ts_ns = r->meta_clock ? r->now : bpf_ktime_get_ns();
	__builtin_memcpy(&h->key, r->key, sizeof(h->key));
}

static __always_inline void sg_emit_classified(struct sg_run *r, struct sg_flow *f, __u8 old, __u8 cls, __u32 reason)
{
	struct sg_ev_classified *ev = events.ringbuf_reserve(sizeof(*ev));

	if (!ev) {
		r->st->c[SG_ST_EVENTS_LOST]++;
		return;
	}
	sg_ev_hdr(&ev->hdr, SG_EV_CLASSIFIED, r);
	ev->old_cls = old;
	ev->new_cls = cls;
	ev->_pad = 0;
	ev->reason = reason;
	ev->pkts = f->pkts[0] + f->pkts[1];
	events.ringbuf_submit(ev, SG_RB_FLAGS);
	/* only a strong decision on UDP has the daemon write (the proving ends into `endpoints`) */
	sg_replay_record(sizeof(*ev), (reason & SG_STRONG_REASONS) && r->key->proto == IPPROTO_UDP);
}

/* Copy up to `max` payload bytes (what the packet holds) into an event's `buf`; returns how many were copied.
 * Inlined with a constant `max`, so the verifier sees the bound of each event's buffer. */
static __always_inline __u16 sg_copy_payload(struct sg_run *r, struct sg_pkt *pk, __u8 *buf, __u32 max)
{
	__u32 off = r->pl_off;
	__u32 avail = r->data_end - (r->data + (off & SG_OFF_MASK));
	__u64 caplen = pk->plen;

	if (caplen > avail)
		caplen = avail;
	if (caplen > max)
		caplen = max;
	if (caplen < 1)
		return 0;
	asm volatile("" : "+r"(caplen)); /* two separate checks: clang must not fuse them into one the verifier loses */
	if (caplen > max || bpf_xdp_load_bytes(r->ctx, off, buf, caplen) != 0)
		return 0;
	return caplen;
}

/* A `sample` event: the first SG_SAMPLE_BYTES payload bytes of an inspected packet of a candidate flow. */
static __always_inline void sg_emit_sample(struct sg_run *r, struct sg_pkt *pk, __u16 inspected)
{
	struct sg_ev_sample *ev = events.ringbuf_reserve(sizeof(*ev));

	if (!ev) {
		r->st->c[SG_ST_EVENTS_LOST]++;
		return;
	}
	sg_ev_hdr(&ev->hdr, SG_EV_SAMPLE, r);
	ev->payload_len = pk->plen;
	ev->inspected = inspected;
	ev->_pad = 0;
	ev->caplen = sg_copy_payload(r, pk, ev->data, sizeof(ev->data));
	events.ringbuf_submit(ev, SG_RB_FLAGS);
	sg_replay_record(sizeof(*ev), inspected >= SG_SAMPLES_MIN); /* E2O decides nothing from fewer samples */
}

/* A `dns`, `tls` or `http` event: the first SG_BIG_BYTES payload bytes. */
static __always_inline void sg_emit_big(struct sg_run *r, struct sg_pkt *pk, __u8 type)
{
	struct sg_ev_big *ev = events.ringbuf_reserve(sizeof(*ev));

	if (!ev) {
		r->st->c[SG_ST_EVENTS_LOST]++;
		return;
	}
	sg_ev_hdr(&ev->hdr, type, r);
	ev->payload_len = pk->plen;
	ev->_pad = 0;
	ev->caplen = sg_copy_payload(r, pk, ev->data, sizeof(ev->data));
	events.ringbuf_submit(ev, SG_RB_FLAGS);
	sg_replay_record(sizeof(*ev), 1); /* names learned from DNS, decisions from TLS and HTTP */
}

/* Set the flow's class; a class change emits `classified`. Daemon-owned classes are never touched. */
static __always_inline void sg_set_class(struct sg_run *r, struct sg_flow *f, __u8 cls, __u32 reason, __u8 done)
{
	__u8 old = f->cls;

	if (f->flags & SG_F_DAEMON)
		return;
	f->reason = reason;
	if (done)
		sg_flags_set(f, SG_F_DONE);
	if (old == cls)
		return;
	f->cls = cls;
	sg_flags_set(f, SG_F_LOGGED);
	r->st->c[SG_ST_CLASSIFIED]++;
	sg_emit_classified(r, f, old, cls, reason);
}

/* ---- DSCP rewrite (keeps the ECN bits) ---- */
static __always_inline int sg_mark(struct sg_run *r, __u8 dscp)
{
	void *data_end = r->data_end;
	void *l3 = r->data + (r->l3_off & SG_OFF_MASK);

	if (!r->v6) {
		struct iphdr *iph = l3;
		__u16 old_w, new_w;
		__u32 sum;
		__u8 tos;

		if ((void *)(iph + 1) > data_end)
			return 0;
		tos = ((dscp & 0x3f) << 2) | (iph->tos & 0x03);
		if (tos == iph->tos)
			return 1;
		old_w = *(__u16 *)iph;
		iph->tos = tos;
		new_w = *(__u16 *)iph;
		/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') */
		sum = (~bpf_ntohs(iph->check) & 0xffff) + (~bpf_ntohs(old_w) & 0xffff) + bpf_ntohs(new_w);
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		iph->check = bpf_htons(~sum & 0xffff);
		return 1;
	}
	__u8 *b = l3;
	__u8 tc;

	if ((void *)(b + 2) > data_end)
		return 0;
	/* version(4) | traffic class(8) | flow label(20): the class straddles bytes 0 and 1 */
	tc = ((b[0] & 0x0f) << 4) | (b[1] >> 4);
	tc = ((dscp & 0x3f) << 2) | (tc & 0x03);
	b[0] = (b[0] & 0xf0) | (tc >> 4);
	b[1] = (b[1] & 0x0f) | ((tc & 0x0f) << 4);
	return 1;
}

/* Microsoft's media ports on a flow to a Microsoft media prefix (docs/signatures.md, endpoint set 11): UDP 3478-3481 on
 * either end, or TCP 443 from a client media port 50000-50059 (media falling back to TCP through the relay). */
static __always_inline __u8 sg_ms_media_ports(struct sg_pkt *pk)
{
	__u16 a = pk->sport, b = pk->dport;

	if (pk->proto == IPPROTO_UDP)
		return (a >= 3478 && a <= 3481) || (b >= 3478 && b <= 3481);
	if (pk->proto == IPPROTO_TCP)
		return (a == 443 && b >= 50000 && b <= 50059) || (b == 443 && a >= 50000 && a <= 50059);
	return 0;
}

/* Well-known UDP services that are never Skype (DNS, DHCP, NTP, NetBIOS, SSDP, mDNS, LLMNR, SIP): decided at once. */
static __always_inline __u8 sg_service_port(__u16 p)
{
	return p == 53 || p == 67 || p == 68 || p == 123 || p == 137 || p == 138 || p == 1900 || p == 5353 ||
	       p == 5355 || p == 5060;
}

/* Direct Routing media processors' ports (docs/signatures.md, "Teams Phone at a company's edge") */
#define SG_DR_PORT_LO 49152
#define SG_DR_PORT_HI 53247

static __always_inline __u8 sg_dr_port(__u16 p)
{
	return p >= SG_DR_PORT_LO && p <= SG_DR_PORT_HI;
}

/* ---- learned endpoints ----
 * A flow proved by a strong signature teaches the endpoints that sent the proof; a new UDP flow with a learned
 * endpoint on either side is Skype from its first packet. The daemon writes the map from the `classified` events of
 * strong decisions (a map update on the inspection path would cost the verifier more states than it allows); the
 * program only reads it, at flow creation. */
static __always_inline void sg_ep_fill(struct sg_ep_key *k, struct sg_flow_key *fk, __u8 hi)
{
	__builtin_memcpy(k->addr, hi ? fk->hi_addr : fk->lo_addr, 16);
	k->port = hi ? fk->hi_port : fk->lo_port;
	k->vlan = fk->vlan;
}

/* Was the lo (hi = 0) or hi endpoint of the key proved Skype within the TTL? */
static __always_inline int sg_ep_known(struct sg_run *r, __u8 hi)
{
	struct sg_ep_key k = {};
	struct sg_ep *e;

	sg_ep_fill(&k, r->key, hi);
	e = endpoints.lookup(&k);
	return e && e->proved_ns + (__u64)SG_EP_TTL_S * 1000000000ULL >= r->now;
}

/* ---- flow creation: the only place with LPM lookups ---- */
static __always_inline struct sg_flow *sg_flow_create(struct sg_run *r, struct sg_pkt *pk, __u8 gen)
{
	struct sg_flow nf = {};
	struct sg_flow *f;
	__u8 pstn = 0, msport = 0, svc = 0, known = 0;

	nf.first_ns = r->now;
	nf.init_dir = r->dir;
	nf.som_func = 0xff;
	nf.rtp_pt[0] = 0xff;
	nf.rtp_pt[1] = 0xff;
	if (sg_in_exempt(pk, gen)) {
		nf.flags |= SG_F_EXEMPT | SG_F_DONE;
	} else {
		if (sg_in_block(pk, gen))
			nf.flags |= SG_F_BLOCKED | SG_F_DONE;
		if (sg_in_msmedia(pk, gen)) {
			nf.evidence |= SG_E_MS_PREFIX;
			msport = sg_ms_media_ports(pk);
		}
		if (pk->proto == IPPROTO_UDP) {
			if (sg_service_port(pk->sport) || sg_service_port(pk->dport))
				svc = 1;
			if (pk->sport == 12340 || pk->dport == 12340)
				nf.evidence |= SG_E_PORT12340;
			if (pk->sport == 53 || pk->dport == 53)
				nf.flags |= SG_F_DNS; /* its responses go to the daemon: never on the fast path */
			/* the processor side of Direct Routing media: its port in 49152-53247 and its address in the ranges */
			if (sg_dr_port(pk->sport) && sg_addr_in_lpm(pk, gen, SG_LPM_DRMEDIA, 1)) {
				nf.evidence |= SG_E_DR_MEDIA | (r->dir ? SG_E_DR_HI : 0);
			} else if (sg_dr_port(pk->dport) && sg_addr_in_lpm(pk, gen, SG_LPM_DRMEDIA, 0)) {
				nf.evidence |= SG_E_DR_MEDIA | (r->dir ? 0 : SG_E_DR_HI);
			}
			/* a learned endpoint on either side, unless the far side is a well-known service's port */
			if (!svc && !msport && ((r->key->hi_port >= 1024 && sg_ep_known(r, 0)) ||
						(r->key->lo_port >= 1024 && sg_ep_known(r, 1))))
				known = 1;
		}
		/* UDP media and TCP fallback alike: the operator says phone calls leave through these addresses */
		if (sg_in_pstn(pk, gen)) {
			pstn = 1;
			nf.flags |= SG_F_DONE;
		}
	}
	if (flows.insert(r->key, &nf) != 0) {
		f = flows.lookup(r->key); /* another CPU may have won the race */
		return f;
	}
	f = flows.lookup(r->key);
	if (!f)
		return 0;
	r->st->c[SG_ST_FLOW_NEW]++;
	if (pstn)
		sg_set_class(r, f, SG_CLASS_OUT, SG_R_PSTN_PREFIX, 1);
	else if (msport)
		sg_set_class(r, f, SG_CLASS_RELAY, SG_R_MS_PREFIX, 0); /* the signatures may still find an SBC leg */
	else if (svc)
		sg_set_class(r, f, SG_CLASS_OTHER, SG_R_SERVICE_PORT, 1);
	else if (known)
		sg_set_class(r, f, SG_CLASS_SIGNALING, SG_R_ENDPOINT, 0); /* the signatures may still find a call */
	return f;
}

/* ---- signatures (inside the inspection window) ---- */

/* The payload (plus `skip` bytes) as a fresh packet pointer whose proven range the verifier has forgotten: the code
 * after each signature then continues in one state whatever bounds checks the branches before it made. */
static __always_inline __u8 *sg_payload(struct sg_run *r, __u32 skip)
{
	__u64 off = r->pl_off + skip;

	asm volatile("" : "+r"(off));
	off &= SG_OFF_MASK;
	return r->data + off;
}
/* ---- evidence: what this packet shows. Facts that last go into the flow, facts about this packet alone into
 * flow.scratch (SG_PK_*); nothing here decides a class. ---- */

/* E2O connection ID: the first 4 payload bytes repeat the previous packet's (same direction) and byte 4 differs. */
static __always_inline void sg_see_cid(struct sg_run *r, struct sg_flow *f, struct sg_pkt *pk, __u8 d)
{
	__u8 *p = sg_payload(r, 0);
	__u32 cid;
	__u8 b4;

	if (pk->plen < 5 || (void *)(p + 5) > r->data_end)
		return;
	cid = ((__u32)p[0]) | ((__u32)p[1] << 8) | ((__u32)p[2] << 16) | ((__u32)p[3] << 24);
	b4 = p[4];
	if (f->pkts[d] > 1 && (cid & 0xffff) == (f->prev_cid[d] & 0xffff))
		f->evidence |= SG_E_IDREP;
	if (f->pkts[d] > 1 && cid == f->prev_cid[d] && b4 != SG_PREV_B4(f, d)) {
		SG_PKF(f) |= SG_PK_CIDREP;
		if (f->cid_rep[d] < 0xffff)
			f->cid_rep[d]++;
		if (f->cid_rep[d] >= 2)
			f->evidence |= SG_E_CID;
	}
	f->prev_cid[d] = cid;
	SG_PREV_B4(f, d) = b4;
}

/* STUN/TURN, else RTP: in the payload itself or inside FF 10 multiplexed TURN framing (inner packet at 12). */
static __always_inline void sg_see_media(struct sg_run *r, struct sg_flow *f, struct sg_pkt *pk, __u8 d)
{
	void *data_end = r->data_end;
	__u32 plen = pk->plen, qlen = plen, skip = 0;
	__u8 *p = sg_payload(r, 0);
	__u8 pt = 0;

	if (plen >= SG_FF10_HDR + 12 && (void *)(p + 2) <= data_end && p[0] == 0xff && p[1] == 0x10) {
		qlen = plen - SG_FF10_HDR;
		skip = SG_FF10_HDR;
	}
	if (sg_stun(sg_payload(r, skip), qlen, data_end, &f->stun[d], &SG_PKF(f))) {
		SG_PKF(f) |= SG_PK_STUN;
		f->evidence |= SG_E_STUN;
		if (f->stun[d] & SG_S_MS)
			f->evidence |= SG_E_MS_ATTR;
		if (skip)
			f->evidence |= SG_E_FF10;
		return;
	}
	if (!sg_rtp(sg_payload(r, skip), qlen, data_end, &pt))
		return;
	f->evidence |= SG_E_RTP;
	f->rtp_pt[d] = pt;
	if (f->rtp_cnt[d] < 0xff)
		f->rtp_cnt[d]++;
	if (pt == 0 || pt == 8 || pt == 18)
		f->sent[d] |= SG_SENT_STATIC_PT;
	if (skip)
		f->evidence |= SG_E_FF10;
}

/* Legacy Start-of-Message: the func byte (payload[2] & 0x8f) of this packet, and whether the flow's first packet
 * looks like a SoM probe (nDPI's old rule, tightened against STUN, RTP, DTLS and DNS). */
static __always_inline void sg_see_som(struct sg_run *r, struct sg_flow *f, struct sg_pkt *pk, __u8 d)
{
	void *data_end = r->data_end;
	__u32 plen = pk->plen;
	__u8 *p = sg_payload(r, 0);
	__u8 func;

	if (plen < 3 || (void *)(p + 3) > data_end)
		return;
	func = p[2] & 0x8f;
	SG_PKF(f) |= SG_PK_FUNC;
	if (f->pkts[0] + f->pkts[1] == 1) {
		f->som_func = func;
		if ((func == 0x02 || func == 0x03) && plen >= 12 && plen <= 100 && !sg_som_bad_first(p[0], p[1]) &&
		    !(SG_PKF(f) & SG_PK_STUN) && pk->sport != 53 && pk->dport != 53 &&
		    !sg_rtp_looking(sg_payload(r, 0), plen, data_end))
			SG_PKF(f) |= SG_PK_SOM_PROBE;
	}
	if (!sg_som_valid(func))
		return;
	SG_PKF(f) |= SG_PK_SOM;
	if (f->som_ok < 0xff)
		f->som_ok++;
	if (func == 0x0d && plen > 4) {
		if (f->som_data < 0xff)
			f->som_data++;
		f->evidence |= SG_E_SOM_DATA;
		f->sent[d] |= SG_SENT_SOM_DATA;
	}
}

/* ---- decision: one walk down this table after each inspected UDP packet, in this order. A row that ends in
 * "stop" ends the walk for this packet; "done" also ends the flow's inspection. The class's reason is in brackets.
 *
 *  1 som-probe     the flow's first packet is a SoM probe, flow still unknown      -> skype-signaling [som-header]
 *  2 som-run       >= 4 packets, each with a valid SoM func, no STUN, CID or
 *                  repeated ID, flow still unknown                                 -> skype-signaling [som-header]
 *  3 som-broken    a later packet's func is no SoM func (and repeats no CID), the
 *                  first one's was, flow unknown or SoM signalling                  -> other [contradicted], stop
 *  4 som-constant  SoM signalling whose first 4 bytes repeated >= 8 times           -> other [contradicted], stop
 *  5 e2e-voice     SoM signalling, >= 16 data frames, some from each direction,
 *                  CID repeats under a quarter of them                             -> skype-p2p [som-voice], done
 *  6 e2o-port      >= 8 CID repeats on a flow with UDP port 12340                  -> skype-out [e2o-port], done
 *  7 dr-media      one end a Direct Routing media processor (its address in the
 *                  drmedia prefixes, its port 49152-53247: set at flow creation),
 *                  >= 2 RTP packets each way that are at least half of the
 *                  inspected ones, and the other end sent no Binding request with
 *                  Microsoft attributes (an SBC is ICE-lite; a Teams client is not) -> skype-out [dr-media], done
 *  8 ms-stun       a Microsoft STUN attribute was seen, then the first of:
 *    a             an endpoint in the Microsoft media prefixes                     -> skype-relay [ms-prefix], done
 *    b             RTP with a static payload type either way                       -> skype-out [rtp-static-pt], done
 *    c             both ends sent connectivity checks, or both sent Binding
 *                  requests with Microsoft attributes of their own                 -> skype-p2p [ice-both], done
 *    d             the initiator sent checks, the far end only answered, >= 6
 *                  packets from the far end                                        -> skype-out [ice-lite], done
 *    e             otherwise                                                       -> skype-relay [ms-stun-attr]
 * 8's reasons also carry ms-stun-attr, and ms-turn-ff10 when the STUN came inside FF 10 framing. The `classified`
 * events of rows 5 and 8a-d make the daemon teach the `endpoints` map the ends that sent the proof (SoM data frames,
 * Microsoft attributes). Then, for UDP and TCP alike (sg_inspect), on a flow not done:
 *  9 no-evidence   SG_PROBE packets without decisive evidence, flow still unknown   -> other [no-evidence], done
 * 10 window-end    SG_WINDOW packets inspected: an unknown or other flow            -> other [window-end], done;
 *                  any other class stays                                           -> done
 */
static __always_inline void sg_decide_udp(struct sg_run *r, struct sg_flow *f)
{
	__u8 pkf = SG_PKF(f);
	__u32 cid_reps = (__u32)f->cid_rep[0] + f->cid_rep[1];
	__u8 som_sig;

	/* 1 som-probe */
	if ((pkf & SG_PK_SOM_PROBE) && f->cls == SG_CLASS_UNKNOWN) {
		f->evidence |= SG_E_SOM;
		sg_set_class(r, f, SG_CLASS_SIGNALING, SG_R_SOM, 0);
	}
	/* 2 som-run: a first packet the probe rule refused (a message ID starting 0x00/0x80/..., a data frame), but every
	 * packet so far carries a valid func: random bytes pass 4 in a row 0.06% of the time */
	if ((pkf & SG_PK_SOM) && f->cls == SG_CLASS_UNKNOWN && !(f->evidence & SG_E_SOM) && f->inspected >= 4 &&
	    f->som_ok >= f->inspected && !(f->evidence & (SG_E_STUN | SG_E_CID | SG_E_IDREP))) {
		f->evidence |= SG_E_SOM;
		sg_set_class(r, f, SG_CLASS_SIGNALING, SG_R_SOM, 0);
	}
	som_sig = f->cls == SG_CLASS_SIGNALING && (f->reason & SG_R_SOM);
	/* 3 som-broken (DNSCrypt, random UDP). Not done: a legacy E2O call starts with SoM signalling and goes on with a
	 * connection ID whose func byte may be anything, and the daemon needs its samples. */
	if ((pkf & (SG_PK_FUNC | SG_PK_SOM | SG_PK_CIDREP)) == SG_PK_FUNC && f->inspected > 1 &&
	    sg_som_valid(f->som_func) && (f->cls == SG_CLASS_UNKNOWN || som_sig)) {
		sg_set_class(r, f, SG_CLASS_OTHER, SG_R_CONTRADICT, 0);
		return;
	}
	/* 4 som-constant: the SoM message ID is random per message, so a constant first 4 bytes is no SoM header; it is
	 * a legacy E2O call's connection ID (the daemon decides from the samples) or a constant-header protocol (games) */
	if (som_sig && cid_reps >= 8) {
		sg_set_class(r, f, SG_CLASS_OTHER, SG_R_CONTRADICT, 0);
		return;
	}
	/* 5 e2e-voice */
	if (som_sig && f->som_data >= 16 && (f->sent[0] & SG_SENT_SOM_DATA) && (f->sent[1] & SG_SENT_SOM_DATA) &&
	    cid_reps * 4 < f->som_data) {
		sg_set_class(r, f, SG_CLASS_P2P, SG_R_SOM | SG_R_SOM_VOICE, 1);
		return;
	}
	/* 6 e2o-port */
	if ((f->evidence & SG_E_PORT12340) && cid_reps >= 8) {
		sg_set_class(r, f, SG_CLASS_OUT, SG_R_E2O_PORT, 1);
		return;
	}
	/* 7 dr-media: RTP is not decisive alone (a quarter of random first bytes carry version 2); both ways, most of
	 * the packets, from and to a documented processor address and port, it is */
	if ((f->evidence & SG_E_DR_MEDIA) && f->rtp_cnt[0] >= 2 && f->rtp_cnt[1] >= 2 &&
	    2 * ((__u32)f->rtp_cnt[0] + f->rtp_cnt[1]) >= f->inspected &&
	    !(f->stun[(f->evidence & SG_E_DR_HI) ? 0 : 1] & SG_S_MSREQ)) {
		sg_set_class(r, f, SG_CLASS_OUT, SG_R_DR_MEDIA, 1);
		return;
	}
	/* 8 ms-stun */
	if (f->evidence & SG_E_MS_ATTR) {
		__u8 s0 = f->stun[0], s1 = f->stun[1];
		__u8 ini = f->init_dir & 1;
		__u8 si = f->stun[ini], so = f->stun[ini ^ 1];
		__u32 extra = SG_R_MS_STUN;

		if (f->evidence & SG_E_FF10)
			extra |= SG_R_FF10;
		if (f->evidence & SG_E_MS_PREFIX) {
			/* a Direct Routing processor's ICE checks: row 7 may still find the SBC's media */
			sg_set_class(r, f, SG_CLASS_RELAY, SG_R_MS_PREFIX | extra, !(f->evidence & SG_E_DR_MEDIA));
		} else if ((f->sent[0] | f->sent[1]) & SG_SENT_STATIC_PT) {
			sg_set_class(r, f, SG_CLASS_OUT, SG_R_RTP_STATIC | extra, 1);
		} else if (((s0 & SG_S_CHECK) && (s1 & SG_S_CHECK)) || ((s0 & SG_S_MSREQ) && (s1 & SG_S_MSREQ))) {
			sg_set_class(r, f, SG_CLASS_P2P, SG_R_ICE_BOTH | extra, 1);
		} else if ((si & SG_S_CHECK) && (so & SG_S_RESP) && !(so & SG_S_REQ) && f->pkts[ini ^ 1] >= 6) {
			sg_set_class(r, f, SG_CLASS_OUT, SG_R_ICE_LITE | extra, 1);
		} else {
			sg_set_class(r, f, SG_CLASS_RELAY, extra, 0); /* Skype for sure, which leg not yet */
		}
	}
}

static __always_inline void sg_inspect_udp(struct sg_run *r, struct sg_flow *f, struct sg_pkt *pk)
{
	__u8 d = r->dir & 1;

	SG_PKF(f) = 0;
	sg_see_cid(r, f, pk, d);
	sg_see_media(r, f, pk, d);
	sg_see_som(r, f, pk, d);
	sg_decide_udp(r, f);
}

/* The first 4 bytes of an HTTP/1.x request line: GET, POST, HEAD, PUT, OPTIONS (RFC 9110 methods) */
static __always_inline int sg_http_method(__u8 *p)
{
	__u32 w = ((__u32)p[0] << 24) | ((__u32)p[1] << 16) | ((__u32)p[2] << 8) | p[3];

	return w == 0x47455420 || w == 0x504f5354 || w == 0x48454144 || w == 0x50555420 || w == 0x4f505449;
}

static __always_inline void sg_inspect_tcp(struct sg_run *r, struct sg_flow *f, struct sg_pkt *pk)
{
	__u8 *p = sg_payload(r, 0);

	/* the first payload of each direction: the client's ClientHello (SNI) and the server's ServerHello and
	 * certificate (names, for hellos without SNI) */
	if (pk->plen == 0 || (f->sent[r->dir & 1] & SG_SENT_TCP_PAYLOAD))
		return;
	f->sent[r->dir & 1] |= SG_SENT_TCP_PAYLOAD;
	if ((void *)(p + 4) > r->data_end)
		return;
	if (p[0] == 0x16 && p[1] == 0x03) {
		f->evidence |= SG_E_TLS;
		sg_emit_big(r, pk, SG_EV_TLS);
	} else if ((pk->sport == 80 || pk->dport == 80) && sg_http_method(p)) {
		sg_emit_big(r, pk, SG_EV_HTTP); /* a plain-HTTP request: the daemon reads its Host header */
	}
}

static __always_inline void sg_inspect(struct sg_run *r, struct sg_flow *f, struct sg_pkt *pk)
{
	__u16 insp;

	if (f->inspected < 0xffff)
		f->inspected++;
	insp = f->inspected;
	r->st->c[SG_ST_INSPECTED]++;
	if (pk->proto == IPPROTO_UDP) {
		sg_inspect_udp(r, f, pk);
		if (f->evidence & (SG_E_SOM | SG_E_CID)) {
			f->evidence |= SG_E_CANDIDATE;
			sg_emit_sample(r, pk, insp);
		}
	} else {
		sg_inspect_tcp(r, f, pk);
	}
	if (f->flags & (SG_F_DONE | SG_F_DAEMON))
		return;
	if (f->cls == SG_CLASS_UNKNOWN && insp >= SG_PROBE && !(f->evidence & SG_E_DECISIVE)) {
		sg_set_class(r, f, SG_CLASS_OTHER, SG_R_NO_EVIDENCE, 1);
	} else if (insp >= SG_WINDOW) {
		if (f->cls == SG_CLASS_UNKNOWN || f->cls == SG_CLASS_OTHER)
			sg_set_class(r, f, SG_CLASS_OTHER, SG_R_WINDOW_END, 1);
		else
			sg_flags_set(f, SG_F_DONE);
	}
}

/* DSCP of the flow's media kind (the first kind one of whose client port ranges holds either endpoint's port), -1 for
 * none: only for classes whose policy slot asks for it, so other flows never pay for the lookup */
static __always_inline int sg_qos_dscp(struct sg_run *r, __u32 gen)
{
	__u32 k = gen & 1;
	struct sg_qos *q = qos.lookup(&k);
	__u16 a, b;

	if (!q)
		return -1;
	if (r->key) {
		a = r->key->lo_port;
		b = r->key->hi_port;
	} else if (r->key4) {
		a = r->key4->lo_port;
		b = r->key4->hi_port;
	} else {
		return -1;
	}
#pragma unroll
	for (int i = 0; i < SG_QOS_KINDS; i++) {
		if ((a >= q->lo[i] && a <= q->hi[i]) || (b >= q->lo[i] && b <= q->hi[i]))
			return q->dscp[i] & 0x3f;
	}
	return -1;
}

/* ---- firewall mark: the class's mark goes to the TC ingress program (bpf/fwmark.bpf.c) as XDP metadata in front of
 * the packet; TC sets skb->mark under the mask. Only slots whose policy says so pay for it. Moving data_meta leaves
 * data in place, but the verifier forgets every packet pointer: nothing reads the packet after this. */
static __always_inline void sg_fwmark(struct sg_run *r, __u32 idx)
{
	struct sg_fwmark *fm = fwmarks.lookup(&idx);
	struct xdp_md *ctx = r->ctx;
	struct sg_mark_meta *m;

	if (!fm)
		return;
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*m)) != 0) {
		r->st->c[SG_ST_FWMARK_SKIPPED]++;
		return;
	}
	m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > (void *)(long)ctx->data) {
		r->st->c[SG_ST_FWMARK_SKIPPED]++;
		return;
	}
	m->magic = SG_MARK_MAGIC;
	m->mark = fm->mark;
	m->mask = fm->mask;
	r->st->c[SG_ST_FWMARK]++;
}

/* ---- enforcement: every packet that reaches the policy goes through here, malformed ones included ----
 * The action of policy slot `slot` (a class, or SG_POL_MALFORMED) in generation `gen`, counted. `dropped` is the
 * flow's drop counter (none for a malformed packet); `can_mark` says the IP header parsed, so a mark may rewrite it
 * (a malformed packet's header cannot be trusted: its mark is counted as skipped). */
static __always_inline int sg_enforce(struct sg_run *r, __u32 gen, __u32 slot, __u64 *dropped, int can_mark)
{
	struct sg_stats *st = r->st;
	__u32 idx = gen * SG_POL_SLOTS + slot;
	struct sg_policy *pol = policy.lookup(&idx);
	__u8 action = pol ? pol->action : SG_ACT_PASS;
	__u8 dscp = pol ? pol->dscp : 0;

	if (pol && (pol->opts & SG_OPT_QOS) && can_mark && action != SG_ACT_DROP) {
		int q = sg_qos_dscp(r, gen);

		if (q >= 0) {
			action = SG_ACT_MARK;
			dscp = q;
		}
	}

	if (action == SG_ACT_DROP) {
		sg_count_verdict(st, slot, SG_ACT_DROP, r->len);
		if (dropped)
			(*dropped)++;
		return XDP_DROP;
	}
	if (action == SG_ACT_MARK) {
		sg_count_verdict(st, slot, SG_ACT_MARK, r->len);
		if (!can_mark || !sg_mark(r, dscp))
			st->c[SG_ST_MARK_SKIPPED]++;
	} else {
		sg_count_verdict(st, slot, SG_ACT_PASS, r->len);
	}
	if (pol && (pol->opts & SG_OPT_FWMARK))
		sg_fwmark(r, idx);
	return XDP_PASS;
}

/* Does a manual block still cover either end of the flow? A flow caches "blocked" when it is created; the block
 * prefixes stay the authority, so a blocked flow asks them again on each of its (dropped) packets and is freed by its
 * first packet after an unblock, whether or not the daemon has seen the flow yet. */
static __always_inline int sg_still_blocked(struct sg_run *r, __u32 gen)
{
	if (r->v6) {
		struct sg_lpm6 k6 = { .prefixlen = SG_LPM6_BITS, .gen = gen };

		__builtin_memcpy(k6.addr, r->key->lo_addr, 16);
		if (block_v6.lookup(&k6))
			return 1;
		__builtin_memcpy(k6.addr, r->key->hi_addr, 16);
		return block_v6.lookup(&k6) != 0;
	}
	struct sg_lpm4 k4 = { .prefixlen = SG_LPM4_BITS, .gen = gen };

	const __u8 *lo, *hi;

	/* the 40-byte key holds the addresses IPv4-mapped (their last 4 bytes); a flow from flows4 has only its compact key */
	if (r->key) {
		lo = &r->key->lo_addr[12];
		hi = &r->key->hi_addr[12];
	} else if (r->key4) {
		lo = r->key4->lo_addr;
		hi = r->key4->hi_addr;
	} else {
		return 0;
	}
	__builtin_memcpy(k4.addr, lo, 4);
	if (block_v4.lookup(&k4))
		return 1;
	__builtin_memcpy(k4.addr, hi, 4);
	return block_v4.lookup(&k4) != 0;
}

#define SG_GEN_UNREAD 0xffffffffu

/* The packet's share of the flow's counters, then the flow-wide verdicts that need no class: exempt (pass) and
 * blocked (drop). Returns the XDP verdict for those, -1 for a flow whose class decides. `*gen` is the packet's one
 * policy generation: read here when a blocked flow needs it and it is still SG_GEN_UNREAD. */
static __always_inline int sg_account(struct sg_run *r, struct sg_flow *f, __u32 *gen)
{
	struct sg_stats *st = r->st;
	__u8 d = r->dir & 1;

	f->pkts[d]++;
	f->bytes[d] += r->len;
	f->last_ns = r->now;
	if (f->flags & (SG_F_EXEMPT | SG_F_BLOCKED)) {
		if (f->flags & SG_F_EXEMPT) {
			st->c[SG_ST_OUT_EXEMPT]++;
			sg_count_verdict(st, SG_VS_EXEMPT, SG_ACT_PASS, r->len);
			return XDP_PASS;
		}
		if (*gen == SG_GEN_UNREAD)
			*gen = sg_gen();
		if (sg_still_blocked(r, *gen)) {
			st->c[SG_ST_OUT_BLOCKED]++;
			sg_count_verdict(st, SG_POL_BLOCKED, SG_ACT_DROP, r->len);
			f->dropped++;
			return XDP_DROP;
		}
		sg_flags_clear(f, SG_F_BLOCKED); /* unblocked since: its class decides from now on */
	}
	return -1;
}

/* A settled flow's packet (nothing left to inspect): its counters, then the verdict of its flow or its class. */
static __always_inline int sg_settled(struct sg_run *r, struct sg_flow *f)
{
	__u32 gen = SG_GEN_UNREAD;
	__u8 cls;
	int rc = sg_account(r, f, &gen);

	if (rc >= 0)
		return rc;
	if (gen == SG_GEN_UNREAD)
		gen = sg_gen();
	cls = f->cls;
	if (cls >= SG_NCLASSES)
		cls = SG_CLASS_UNKNOWN;
	return sg_enforce(r, gen, cls, &f->dropped, 1);
}

#define SG_EEXIST 17 /* errno: the key is in the map already */

/* A settled flow between two IPv4 addresses moves from `flows` to flows4, whole, after its packet was accounted in
 * full: nothing may write through `f` afterwards, since a deleted element is free for the next insert. If another CPU
 * moved it first, that copy stays. A daemon decision written into the old entry while it moves is caught by the
 * daemon's read-back of its decisions (Engine.recheck). */
static __always_inline void sg_move4(struct sg_run *r, struct sg_flow *f)
{
	struct sg_flow copy;
	int err;

	if (!r->key || !r->key4)
		return;
	__builtin_memcpy(&copy, f, sizeof(copy));
	err = flows4.insert(r->key4, &copy);
	if (err == 0 || err == -SG_EEXIST)
		flows.delete(r->key);
}

#ifndef SG_META_CLOCK
/* ---- the fast lane (live build): a packet of a settled flow between two IPv4 addresses, most of a router's traffic
 * It parses IPv4 alone, looks in flows4 alone, and reads the counters and the clock only once it has the flow: none
 * of the full path's state (its 40-byte key, its IPv6 parse, what it keeps across its lookups) is built or carried
 * for these packets. Any other packet falls through having changed nothing, and sg_packet parses and counts it from
 * the start: a new flow or one in inspection pays one IPv4 parse and compact key more (the full path skips its own
 * first flows4 lookup, which the fast lane has just made), an IPv6 or non-IP packet one Ethernet parse more. Returns
 * -1 to fall through.
 *
 * The verifier walks the full path once per distinct state it falls through in: the fall-throughs after a failed
 * parse share one, the one after a missed lookup (its key and lookup result on the stack) is a second, and the one
 * of a failed stats lookup (which cannot happen) adds no third walk. So the live build verifies the full path twice:
 * about 850,000 instructions against 470,000 without the lane. The replay build, whose full path alone nearly fills
 * the verifier's budget, has no fast lane: its packets all take the full path, which serves a flows4 flow the same
 * way. */
static __always_inline int sg_fast4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct sg_pkt pk = {};
	struct sg_flow_key4 key4; /* every byte written by sg_flow_key4: zeroing it first would be a third state */
	struct sg_run r = {};
	struct sg_stats *st;
	struct sg_flow *f;
	__u32 zero = 0;

	if (sg_parse4(data, data_end, &pk) != 0)
		return -1;
	r.dir = sg_flow_key4(&pk, &key4);
	f = flows4.lookup(&key4);
	if (!f)
		return -1;
	st = stats.lookup(&zero);
	if (!st)
		return -1;
	r.now = sg_clock(ctx, data, &r.meta_clock, &r.place);
	r.len = data_end - data; /* the datagram ends inside the first buffer: sg_parse4 checked it there */
	r.ctx = ctx;
	r.st = st;
	r.data = data;
	r.data_end = data_end;
	r.key4 = &key4;
	r.l3_off = (__u32)(pk.l3 - data);
	asm volatile("" : "+r"(r.l3_off)); /* as in sg_packet: a mark rewrites the header through this offset */
	return sg_settled(&r, f);
}
#endif

static __always_inline int sg_packet(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct sg_pkt pk = {};
	struct sg_flow_key key = {};
	struct sg_flow_key4 key4 = {};
	struct sg_run r = {};
	struct sg_frame fr = {};
	struct sg_stats *st;
	struct sg_flow *f;
	__u32 zero = 0, idx, gen;
	__u8 cls, in4;
	int rc;

	st = stats.lookup(&zero);
	if (!st)
		return XDP_PASS;
	r.now = sg_clock(ctx, data, &r.meta_clock, &r.place);
	if (r.meta_clock)
		st->c[SG_ST_META_TS]++;

	r.len = data_end - data; /* a jumbo frame in several buffers: the parse sets its whole length */
	fr.ctx = ctx;
	fr.len = &r.len;
	fr.count = &st->c[SG_ST_MULTIBUF];
	rc = sg_parse_frame(&fr, data, data_end, &pk);
	if (rc > 0) { /* non-IP, other L4, non-first fragment: passed without a flow */
		if (rc < SG_ST_MAX)
			st->c[rc]++;
		sg_count_verdict(st, SG_VS_NONE, SG_ACT_PASS, r.len);
		return XDP_PASS;
	}
	r.st = st;
	r.ctx = ctx;
	if (rc < 0) { /* malformed: counted, then the action of the SG_POL_MALFORMED slot */
		idx = -rc;
		if (idx < SG_ST_MAX)
			st->c[idx]++;
		return sg_enforce(&r, sg_gen(), SG_POL_MALFORMED, 0, 0);
	}

	r.data = data;
	r.data_end = data_end;
	r.v6 = pk.v6;
	r.l3_off = (__u32)(pk.l3 - data);
	asm volatile("" : "+r"(r.l3_off)); /* forget the per-path constant (see SG_OFF_MASK) */

	/* both addresses IPv4 (an IPv4 packet, or IPv6 between IPv4-mapped ones): key4 then holds the compact key */
	in4 = !pk.v6;
	/* a settled flow between two IPv4 addresses is in flows4: its packets need the compact key alone */
	if (in4) {
		r.dir = sg_flow_key4(&pk, &key4);
#ifdef SG_META_CLOCK
		r.key4 = &key4;
		f = flows4.lookup(&key4);
		if (f)
			return sg_settled(&r, f);
#endif
		/* live, the fast lane has just missed flows4 for this key: the look after the `flows` miss below still
		 * finds a flow moved since, or one whose packet the fast lane could not parse (a datagram past the first
		 * buffer) */
	}
	/* any other: a new flow, one in its inspection, an IPv6 flow, or an IPv4 one that has not moved yet */
	r.dir = sg_flow_key(&pk, &key);
	r.key = &key;
	if (pk.v6 && sg_key4_of(&key, &key4)) { /* IPv6 between IPv4-mapped addresses: the same flow key, so the same table */
		in4 = 1;
		r.key4 = &key4;
		f = flows4.lookup(&key4);
		if (f)
			return sg_settled(&r, f);
	}
	/* from here on every packet has the same state, whatever table it missed: the verifier then walks the long path
	 * below once, not once per kind of key (whether the flow moves is asked again once it has settled) */
	r.key4 = 0;

	f = flows.lookup(&key);
	if (!f && in4) {
		/* another CPU moved it between the two lookups (a move inserts into flows4 before it deletes here): without
		 * this look, the packet would make a second flow of the same key in `flows` */
		struct sg_flow *moved = flows4.lookup(&key4);

		if (moved) {
			r.key4 = &key4;
			return sg_settled(&r, moved);
		}
	}
	if (f && (f->flags & (SG_F_DONE | SG_F_DAEMON)) && !(f->flags & SG_F_DNS)) {
		/* nothing left to inspect, so nothing of the parse but the keys and the IP header's place stays live across
		 * the lookup (the slow path parses again rather than keep the parse's fields). A flow between two IPv4
		 * addresses moves to flows4 here, with its first packet after it settled: the long path below is left as
		 * it is, for the verifier, whose budget it nearly fills in the replay build */
		rc = sg_settled(&r, f);
		if (in4) {
			r.key4 = &key4;
			sg_move4(&r, f);
		}
		return rc;
	} else {
		/* the slow path parses the packet again (identically: same bytes) rather than keep the first parse */
		struct sg_pkt sp = {};
		struct sg_frame again = { .ctx = ctx }; /* the frame was counted by the first parse */

		if (sg_parse_frame(&again, data, data_end, &sp) != 0)
			return XDP_ABORTED; /* cannot happen: the same packet parsed above */
		r.pl_off = (__u32)(sp.pl - data);
		asm volatile("" : "+r"(r.pl_off));
		gen = sg_gen();
		if (!f) {
			f = sg_flow_create(&r, &sp, gen);
			if (!f) {
				st->c[SG_ST_OUT_NO_FLOW]++;
				sg_count_verdict(st, SG_VS_NONE, SG_ACT_PASS, r.len);
				return XDP_PASS;
			}
		}
		rc = sg_account(&r, f, &gen);
		if (rc >= 0)
			return rc;
		if (sp.proto == IPPROTO_UDP && sp.sport == 53)
			sg_emit_big(&r, &sp, SG_EV_DNS);
		if (!(f->flags & (SG_F_DONE | SG_F_DAEMON)) && f->inspected < SG_WINDOW)
			sg_inspect(&r, f, &sp);
		cls = f->cls;
		if (cls >= SG_NCLASSES)
			cls = SG_CLASS_UNKNOWN;
		return sg_enforce(&r, gen, cls, &f->dropped, 1);
	}
}

#ifdef SG_META_CLOCK
/* ---- a replay's batch (struct sg_batch): the packets of one test run, one after the other ---- */
_Static_assert((SG_BATCH_MAX & (SG_BATCH_MAX - 1)) == 0, "SG_BATCH_MAX is a power of two");
_Static_assert(SG_BATCH_BYTES <= 0xffff, "lengths and skip are masked to 16 bits");
#ifdef SG_XDP_CHAIN
#error "a replay build is never chained: a batch records skyguard's verdicts, and a chained program would see one packet"
#endif

/* A batch index the verifier sees bounded: masked behind a barrier, so the compiler cannot drop the mask as redundant
 * with the caller's checks (which it may reorder so that the verifier loses them). */
static __always_inline __u32 sg_bidx(__u32 i)
{
	asm volatile("" : "+r"(i));
	return i & (SG_BATCH_MAX - 1);
}

/* The batch's first packet is the buffer's last: the frame starts there. 0, or -1 when the frame cannot move. */
static __always_inline int sg_batch_first(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sg_batch *b = batch.lookup(&zero);

	if (!b || b->n < 2 || b->done || !b->skip)
		return 0;
	if (bpf_xdp_adjust_head(ctx, b->skip & 0xffff) == 0)
		return 0;
	b->stop = 1; /* done stays 0: the walker runs these packets one by one */
	return -1;
}

/* Packet `done` gave `rc`: record it, then make the frame the next packet (the one in front of this one), with its
 * capture time in the metadata, and run the program on it. Returns when the batch ends: all ran, a packet left a
 * record (stop), or a move failed. */
static __always_inline void sg_batch_next(struct xdp_md *ctx, int rc)
{
	__u32 zero = 0, i, len, prev;
	struct sg_batch *b = batch.lookup(&zero);
	struct sg_meta *m;

	if (!b || b->n < 2)
		return;
	i = b->done;
	if (i >= SG_BATCH_MAX || i >= b->n)
		return;
	b->pkt[sg_bidx(i)].verdict = rc;
	b->done = ++i;
	if (i >= SG_BATCH_MAX || i >= b->n || b->stop)
		return;
	len = (b->pkt[sg_bidx(i)].len & 0xffff) + SG_BATCH_GAP;
	prev = (b->pkt[sg_bidx(i - 1)].len & 0xffff) + SG_BATCH_GAP;
	if (bpf_xdp_adjust_head(ctx, -(int)len) || bpf_xdp_adjust_tail(ctx, -(int)prev))
		goto fail;
	/* a firewall mark put its metadata in front of the replay's: the next packet gets the replay's alone */
	m = (void *)(long)ctx->data_meta;
	if ((void *)m + sizeof(*m) + sizeof(struct sg_mark_meta) <= (void *)(long)ctx->data &&
	    bpf_xdp_adjust_meta(ctx, sizeof(struct sg_mark_meta)))
		goto fail;
	m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > (void *)(long)ctx->data)
		goto fail;
	m->magic = SG_META_MAGIC;
	m->place = b->place + i;
	m->ts_ns = b->pkt[sg_bidx(i)].ts_ns;
	replay_next.call(ctx, 0);
	/* the tail call failed (the kernel's limit): the walker runs the rest in another test run */
	return;
fail:
	b->stop = 1;
}
#endif

/* Every packet; with chaining (SG_XDP_CHAIN), a packet skyguard passes goes on to the program that was attached to the
 * interface before it. A tail call does not return: that program's verdict is the packet's. An empty slot (no
 * foreign program on this interface) falls through to XDP_PASS. */
int xdp_skyguard(struct xdp_md *ctx)
{
#ifdef SG_META_CLOCK
	if (sg_batch_first(ctx))
		return XDP_ABORTED;
#endif
#ifdef SG_META_CLOCK
	int rc = sg_packet(ctx);
#else
	int rc = sg_fast4(ctx);

	if (rc < 0) {
		/* the full path loads everything again (ctx->data too) rather than keep what the fast lane loaded: the
		 * fall-throughs then differ only in the fast lane's stack, and most of them meet the verifier in one state */
		asm volatile("" ::: "memory");
		rc = sg_packet(ctx);
	}
#endif

#ifdef SG_META_CLOCK
	sg_batch_next(ctx, rc);
#endif

#ifdef SG_XDP_CHAIN
	if (rc == XDP_PASS)
		chain.call(ctx, ctx->ingress_ifindex);
#endif
	return rc;
}

/* ---- the daemon's decisions (never attached: run through BPF_PROG_TEST_RUN with one struct sg_verdict as the
 * packet). The flow is changed in place, field by field: counters are never written, so packets that other CPUs count
 * meanwhile all stay counted, and a class the kernel sets is replaced only by an SG_V_CLASS decision. Flag bits are
 * set with atomic ops on the aligned 64-bit word that holds flow.flags (bcc's target has 64-bit atomics only), so the other bytes of that word are untouched.
 * Returns XDP_PASS when the flow exists (the decision applied), XDP_DROP when it does not, XDP_ABORTED on bad input. */
int xdp_verdict(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct sg_verdict *v = data;
	struct sg_flow_key key;
	struct sg_flow_key4 key4;
	struct sg_flow *f = 0;

	if ((void *)(v + 1) > data_end || v->magic != SG_V_MAGIC)
		return XDP_ABORTED;
	__builtin_memcpy(&key, &v->key, sizeof(key));
	if (sg_key4_of(&key, &key4))
		f = flows4.lookup(&key4);
	if (!f) /* any other flow, or an IPv4 one that a version before flows4 made and no packet has moved yet */
		f = flows.lookup(&key);
	if (!f)
		return XDP_DROP;
	if (v->set_flags)
		sg_flags_set(f, v->set_flags);
	if (v->clear_flags)
		sg_flags_clear(f, v->clear_flags);
	if (v->op == SG_V_CLASS) {
		/* SG_F_DAEMON is in set_flags and already set: from here on the kernel's own signatures leave the class alone */
		f->reason = v->reason;
		f->cls = v->cls;
	}
	/* the flow's state after the decision, for the daemon to check */
	v->cls = f->cls;
	v->set_flags = f->flags;
	return XDP_PASS;
}
