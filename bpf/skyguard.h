/* SPDX-License-Identifier: GPL-2.0 */
/* skyguard.h: the one header shared by the XDP program and userspace, and the one description of what they exchange.
 *
 * The daemon reads this file at import time (daemon/skyguard/cheader.py, strictly: anything it cannot read fails
 * loudly): every `#define SG_<NAME> <integer>`, the wire name of a define whose comment starts with a quoted string
 * (classes, actions, reasons, events: SG_CLASS_OUT is "skype-out" in logs, the socket and policies), and every
 * struct's layout, from which it builds its struct formats and numpy dtypes; tests/unit/test_wire.py checks those
 * layouts against gcc's sizes and offsets. Members named _pad... are padding; a [SG_DIRS] array holds one value per
 * direction (dir 0 = lo -> hi).
 *
 * Byte order: addresses are in network order (as on the wire), ports/VLAN ids in host order.
 */
#ifndef SKYGUARD_H
#define SKYGUARD_H

#include <linux/types.h>

/* ---- classes (stable numbers: maps, events, logs, socket, policies) ---- */
#define SG_CLASS_UNKNOWN   0 /* "unknown": not decided yet */
#define SG_CLASS_OTHER     1 /* "other": decided, not Skype */
#define SG_CLASS_SIGNALING 2 /* "skype-signaling" */
#define SG_CLASS_P2P       3 /* "skype-p2p": media of a PC-to-PC call */
#define SG_CLASS_OUT       4 /* "skype-out": media of a PC-to-phone call */
#define SG_CLASS_RELAY     5 /* "skype-relay": media through a Microsoft relay, leg not known yet */
#define SG_NCLASSES        6
/* policy slots past the classes */
#define SG_POL_MALFORMED   6 /* "malformed": action for packets that fail to parse */
#define SG_POL_BLOCKED     7 /* "blocked": action for manually blocked addresses (always drop; dscp/log used) */
#define SG_POL_SLOTS       8
/* verdict slots (the per-(slot, action) counters): the policy slots, then the packets no policy slot decides */
#define SG_VS_EXEMPT       8 /* "exempt": a flow of an exempt prefix, passed untouched */
#define SG_VS_NONE         9 /* "none": no flow: non-IP, other L4, non-first fragment, flow insert failed */
#define SG_VS_SLOTS        10

/* ---- actions ---- */
#define SG_ACT_PASS 0 /* "pass" */
#define SG_ACT_DROP 1 /* "drop" */
#define SG_ACT_MARK 2 /* "mark": rewrite the DSCP, keep the ECN bits */
#define SG_NACTIONS 3

/* ---- reason bits: which evidence decided a flow's class (flow.reason, classified event) ----
 * Listed in priority order: a flow whose reason holds several bits is named by the first one listed. */
#define SG_R_MANUAL       0x00010000 /* "manual": reserved (a manual block is the flow's SG_F_BLOCKED flag) */
#define SG_R_PSTN_PREFIX  0x00000040 /* "pstn-prefix": peer in the policy's PSTN prefixes */
#define SG_R_PSTN_NAME    0x00000080 /* "pstn-name": peer learned from DNS answers for a PSTN name */
#define SG_R_DR_TRUNK     0x00800000 /* "dr-trunk": daemon: TLS to Microsoft's Direct Routing SIP proxies (name) */
#define SG_R_DR_MEDIA     0x01000000 /* "dr-media": RTP between an SBC and a Direct Routing media processor */
#define SG_R_E2O_PORT     0x00000004 /* "e2o-port": connection-ID repetition towards UDP 12340 */
#define SG_R_E2O_STATS    0x00000008 /* "e2o-stats": daemon: CID statistics, chi-square, constant bit rate */
#define SG_R_RTP_STATIC   0x00000400 /* "rtp-static-pt": static RTP payload type 0/8/18 on a Skype flow */
#define SG_R_ICE_LITE     0x00000100 /* "ice-lite": far end answers connectivity checks, never sends them */
#define SG_R_ICE_BOTH     0x00000200 /* "ice-both": both ends send connectivity checks */
#define SG_R_SILK         0x00040000 /* "silk-pt": SILK/G.722 RTP payload types on a Skype flow */
#define SG_R_MS_PREFIX    0x00000020 /* "ms-prefix": peer in the Microsoft media prefixes */
#define SG_R_MS_STUN      0x00000010 /* "ms-stun-attr": STUN/TURN with Microsoft attributes */
#define SG_R_FF10         0x00020000 /* "ms-turn-ff10": multiplexed TURN framing FF 10 */
#define SG_R_SOM_VOICE    0x00000002 /* "som-voice": legacy SoM data frames both ways: an E2E call */
#define SG_R_SOM          0x00000001 /* "som-header": legacy Start-of-Message header, func byte under 0x8f */
#define SG_R_SNI          0x00000800 /* "tls-sni": TLS ClientHello server name of a Skype/Teams service */
#define SG_R_HTTP_HOST    0x00400000 /* "http-host": daemon: plain-HTTP Host header of a Skype/Teams service */
#define SG_R_DNS_NAME     0x00001000 /* "dns-name": peer learned from DNS answers for a Skype/Teams name */
#define SG_R_HOST_CORR    0x00200000 /* "host-corr": daemon: TLS from a client in a Skype/Teams session, to Azure */
#define SG_R_ENDPOINT     0x00080000 /* "known-endpoint": an endpoint a strong signature proved Skype (`endpoints`) */
#define SG_R_CONTRADICT   0x00008000 /* "contradicted": later packets contradict the legacy header */
#define SG_R_SERVICE_PORT 0x00100000 /* "service-port": a well-known non-Skype UDP service (DNS, NTP, SIP...) */
#define SG_R_NO_EVIDENCE  0x00002000 /* "no-evidence": probe window passed without any Skype evidence */
#define SG_R_WINDOW_END   0x00004000 /* "window-end": inspection window ended undecided */

/* ---- flow.evidence: facts seen so far that are not decisive alone ---- */
#define SG_E_SOM          0x0001 /* a packet carried a valid SoM func */
#define SG_E_SOM_DATA     0x0002 /* a SoM data frame (func 0x0d) */
#define SG_E_CID          0x0004 /* connection-ID repetition seen */
#define SG_E_STUN         0x0008 /* a STUN/TURN message parsed */
#define SG_E_MS_ATTR      0x0010 /* a Microsoft STUN attribute */
#define SG_E_RTP          0x0020 /* an RTP v2 header */
#define SG_E_MS_PREFIX    0x0040 /* an endpoint is in msmedia_v4/6 */
#define SG_E_TLS          0x0080 /* TLS handshake seen (first TCP payload) */
#define SG_E_PORT12340    0x0100 /* an endpoint uses UDP 12340 */
#define SG_E_FF10         0x0200 /* FF 10 multiplexed TURN framing */
#define SG_E_IDREP        0x0400 /* the first 2 payload bytes repeated packet to packet: no random SoM message ID */
#define SG_E_DR_MEDIA     0x0800 /* an endpoint on UDP 49152-53247 is in drmedia_v4/6: a Direct Routing processor */
#define SG_E_DR_HI        0x1000 /* ... and that processor is the key's hi endpoint (its packets are dir 1) */
#define SG_E_CANDIDATE    0x8000 /* flow emits `sample` events */

/* ---- flow.stun[dir]: what each direction's STUN/TURN messages showed ---- */
#define SG_S_REQ      0x01 /* sent a Binding request */
#define SG_S_RESP     0x02 /* sent a Binding success/error response */
#define SG_S_CHECK    0x04 /* sent a connectivity check (request with PRIORITY or ICE-CONTROLLING/ED) */
#define SG_S_MS       0x08 /* sent a Microsoft attribute */
#define SG_S_COOKIE   0x10 /* RFC 5389 magic cookie present */
#define SG_S_TURN     0x20 /* TURN allocate/send/data/channel */
#define SG_S_MSREQ    0x40 /* sent a Binding request that itself carried a Microsoft attribute */

/* ---- flow.sent[dir]: what else each direction has sent ---- */
#define SG_SENT_SOM_DATA    0x01 /* UDP: a legacy SoM data frame (func 0x0d) */
#define SG_SENT_STATIC_PT   0x02 /* UDP: RTP with a static payload type 0/8/18 (G.711, G.729) */
#define SG_SENT_TCP_PAYLOAD 0x04 /* TCP: its first payload (the one the TLS check looks at) */

/* ---- flow.flags ---- */
#define SG_F_DAEMON   0x02 /* class written by the daemon: the kernel no longer re-classifies */
#define SG_F_DONE     0x04 /* inspection finished: fast path only */
#define SG_F_LOGGED   0x08 /* a classified event was emitted */
#define SG_F_BLOCKED  0x10 /* an endpoint is in block_v4/6 (set at flow creation; re-synced on block/unblock) */
#define SG_F_EXEMPT   0x20 /* an endpoint is in exempt_v4/6 (set at flow creation; re-synced on reload) */
#define SG_F_DNS      0x40 /* UDP port 53 on either end (set at creation): its responses go to the daemon as events */

/* ---- per-CPU counters (stats map index). Outcomes: every packet lands in exactly one SG_ST_OUT_* ----
 * SG_ST_PACKETS, SG_ST_BYTES, SG_ST_OUT_FLOW, SG_ST_ACT_* and the per-class counters are never written by the kernel:
 * each is a sum of (verdict slot, action) pairs, which the packet moves anyway, and userspace adds them up when it
 * reads the map (wire.derive_stats). A settled flow's packet then writes one pair, not seven counters. */
#define SG_ST_PACKETS          0  /* derived: every pair */
#define SG_ST_BYTES            1  /* derived: every pair's bytes */
#define SG_ST_OUT_FLOW         2  /* derived: the class slots' pairs (went through the flow table to its class) */
#define SG_ST_OUT_NON_IP       3  /* ARP, LLDP, ...: passed */
#define SG_ST_OUT_OTHER_L4     4  /* ICMP, SCTP, ...: passed */
#define SG_ST_OUT_FRAGMENT     5  /* IPv4/IPv6 non-first fragment: passed */
#define SG_ST_OUT_EXEMPT       6  /* exempt prefix: passed untouched */
#define SG_ST_OUT_BLOCKED      7  /* manual block map hit */
#define SG_ST_OUT_NO_FLOW      8  /* flow insert failed: must stay 0 (alert on it) */
#define SG_ST_ERR_ETH          9  /* truncated Ethernet header */
#define SG_ST_ERR_VLAN         10 /* truncated VLAN tag */
#define SG_ST_ERR_VLAN_DEPTH   11 /* more than 2 VLAN tags */
#define SG_ST_ERR_IP4          12 /* truncated IPv4 header */
#define SG_ST_ERR_IP4_IHL      13 /* IHL < 5 or options past the packet */
#define SG_ST_ERR_IP4_LEN      14 /* total length < header or > packet */
#define SG_ST_ERR_IP6          15 /* truncated IPv6 header */
#define SG_ST_ERR_IP6_EXT      16 /* truncated extension header */
#define SG_ST_ERR_IP6_DEPTH    17 /* more extension headers than SG_IP6_EXT_MAX */
#define SG_ST_ERR_UDP          18 /* truncated UDP header or bad length */
#define SG_ST_ERR_TCP          19 /* truncated TCP header or data offset < 5 */
#define SG_ST_ERR_VERSION      20 /* IP version field disagrees with ethertype */
#define SG_ST_ACT_PASS         21 /* derived: every slot's pass pair */
#define SG_ST_ACT_DROP         22 /* derived: every slot's drop pair */
#define SG_ST_ACT_MARK         23 /* derived: every slot's mark pair */
#define SG_ST_FLOW_NEW         24 /* flows created */
#define SG_ST_CLASSIFIED       25 /* class changes made by the kernel */
#define SG_ST_EVENTS_LOST      26 /* ring buffer full: event dropped (never blocks) */
#define SG_ST_INSPECTED        27 /* packets that ran the signatures */
#define SG_ST_META_TS          28 /* packets whose clock came from XDP metadata (replay) */
#define SG_ST_CLASS_BASE       29 /* 29..34: packets per class (derived: the class slot's pairs) */
#define SG_ST_MARK_SKIPPED     35 /* mark action on a packet whose DSCP could not be rewritten */
#define SG_ST_FWMARK           36 /* packets that carried their class's firewall mark to TC in XDP metadata */
#define SG_ST_FWMARK_SKIPPED   37 /* a firewall mark the driver had no metadata room for (the packet still passed) */
#define SG_ST_MULTIBUF         38 /* IP datagrams longer than the first buffer (jumbo frames, XDP multi-buffer) */
/* 40..99: every packet moves exactly one (verdict slot, action) pair where its verdict is decided: the pair's packet
 * counter at SG_ST_VERDICT_BASE + 2 * (slot * SG_NACTIONS + action) and its byte counter right after it (same cache
 * line: one index, two increments). They are SG_ST_PACKETS and SG_ST_BYTES. 39 is spare. */
#define SG_ST_VERDICT_BASE     40
#define SG_ST_MAX              100

/* first and last SG_ST_OUT_x / SG_ST_ERR_x index: the outcome block that must sum to SG_ST_PACKETS */
#define SG_ST_OUTCOME_FIRST    2
#define SG_ST_OUTCOME_LAST     20

/* The `stats` map is a per-CPU array with ONE entry of this struct: one lookup per packet, then plain increments.
 * Its size is the pinned map's value size: a daemon whose SG_ST_MAX differs from the pin's recreates the map
 * (daemon/skyguard/kernel/pins.py), so the counters restart across such an upgrade. */
struct sg_stats {
	__u64 c[SG_ST_MAX];
};

/* ---- ring buffer events ---- */
#define SG_EV_CLASSIFIED 1 /* "classified": a flow's class changed */
#define SG_EV_SAMPLE     2 /* "sample": payload of an inspected packet of a candidate flow */
#define SG_EV_DNS        3 /* "dns": a DNS response, for learning names -> addresses */
#define SG_EV_TLS        4 /* "tls": first TCP payload that starts a TLS handshake, for the server name */
#define SG_EV_HTTP       5 /* "http": first TCP payload of a plain-HTTP request on port 80, for its Host header */
#define SG_SAMPLE_BYTES  64
#define SG_BIG_BYTES     512
/* Kernel decisions on strong evidence: the daemon writes the ends that proved them into `endpoints` (learned
 * endpoints, read when a UDP flow is created). Of a `classified` record, only such a decision's, on UDP, leads the
 * daemon to write anything into the kernel: in a replay, any other `classified` record does not end its batch
 * (struct sg_batch). */
#define SG_STRONG_REASONS (SG_R_SOM_VOICE | SG_R_ICE_BOTH | SG_R_ICE_LITE | SG_R_RTP_STATIC | SG_R_MS_PREFIX)
/* The slow path decides nothing from a flow's samples before it holds this many (E2O/E2E, docs/signatures.md): in a
 * replay, a sample of a flow's first SG_SAMPLES_MIN - 1 inspected packets does not end its batch (struct sg_batch) */
#define SG_SAMPLES_MIN   100

/* ---- limits (the daemon passes -D overrides) ---- */
#ifndef SG_FLOWS_MAX
#define SG_FLOWS_MAX 262144
#endif
#ifndef SG_WINDOW
#define SG_WINDOW 160 /* packets per flow that run the signatures */
#endif
#ifndef SG_PROBE
#define SG_PROBE 8 /* packets after which a flow without any evidence is `other` */
#endif
#ifndef SG_LPM_MAX
#define SG_LPM_MAX 131072
#endif
#ifndef SG_RINGBUF_BYTES
#define SG_RINGBUF_BYTES (1 << 22)
#endif
#ifndef SG_CHAIN_MAX
#define SG_CHAIN_MAX 65536 /* ifindexes the `chain` program array covers */
#endif
#ifndef SG_IP6_EXT_MAX
#define SG_IP6_EXT_MAX 6
#endif
#ifndef SG_EP_MAX
#define SG_EP_MAX 65536 /* learned endpoints (LRU) */
#endif
#ifndef SG_EP_TTL_S
#define SG_EP_TTL_S 120 /* a learned endpoint makes new flows Skype for this long after its last proof */
#endif
#ifndef SG_STUN_ATTR_MAX
#define SG_STUN_ATTR_MAX 12
#endif

/* Bidirectional 5-tuple: the lower (address, port) endpoint first. IPv4 addresses are IPv4-mapped (::ffff:a.b.c.d). */
struct sg_flow_key {
	__u8 lo_addr[16];
	__u8 hi_addr[16];
	__u16 lo_port;
	__u16 hi_port;
	__u16 vlan; /* outer VLAN id, 0 when untagged */
	__u8 proto;
	__u8 _pad;
}; /* 40 bytes */

/* The key of a flow between two IPv4 addresses (IPv4-mapped in struct sg_flow_key, whichever IP version carried it):
 * the addresses' last 4 bytes, then the same 8 bytes. Such flows live in `flows4`, whose key the kernel hashes and
 * compares in well under half the work of the 40-byte one; struct sg_flow_key stays the form that events, verdicts
 * and every reader in userspace use. */
struct sg_flow_key4 {
	__u8 lo_addr[4];
	__u8 hi_addr[4];
	__u16 lo_port;
	__u16 hi_port;
	__u16 vlan;
	__u8 proto;
	__u8 _pad;
}; /* 16 bytes */

/* Per-flow state. dir 0 = lo -> hi, dir 1 = hi -> lo. */
#define SG_DIRS 2
struct sg_flow {
	__u64 first_ns;
	__u64 last_ns;
	__u64 pkts[SG_DIRS];
	__u64 bytes[SG_DIRS];
	__u64 dropped;
	__u32 reason;      /* SG_R_* that decided the class */
	__u32 prev_cid[SG_DIRS]; /* first 4 payload bytes of the previous packet per direction */
	__u16 cid_rep[SG_DIRS];  /* packets whose first 4 bytes repeat the previous packet's and byte 4 differs */
	__u16 evidence;    /* SG_E_* */
	__u16 inspected;   /* packets that ran the signatures */
	__u8 cls;
	__u8 init_dir;     /* direction of the flow's first packet */
	__u8 som_func;     /* SoM func (payload[2] & 0x8f) of the first packet, 0xff none */
	__u8 som_ok;       /* packets with a valid SoM func (saturating) */
	__u8 som_data;     /* SoM data frames (func 0x0d) (saturating) */
	__u8 stun[SG_DIRS];      /* SG_S_* per direction: STUN/ICE facts */
	__u8 rtp_pt[SG_DIRS];    /* last RTP payload type per direction, 0xff none */
	__u8 rtp_cnt[SG_DIRS];   /* RTP packets per direction (saturating) */
	__u8 flags;        /* SG_F_* */
	__u8 prev_b4[SG_DIRS];   /* byte 4 of the previous payload per direction (the CID rule needs it) */
	__u8 _pad;
	__u8 scratch;      /* kernel-private per-packet scratch bits, cleared before each inspected packet */
	__u8 sent[SG_DIRS];      /* SG_SENT_* per direction */
	__u8 _pad2[2];
}; /* 96 bytes */

/* sg_policy.opts bits */
#define SG_OPT_QOS    0x01 /* media of this class is marked by media kind (the `qos` map) unless the action is drop */
#define SG_OPT_FWMARK 0x02 /* passed packets carry the slot's `fwmarks` entry to the TC program (never with drop) */

/* Policy slot (class or SG_POL_*). */
struct sg_policy {
	__u8 action; /* SG_ACT_* */
	__u8 dscp;   /* 0..63, for SG_ACT_MARK */
	__u8 log;    /* 1: the daemon logs every decision on this class */
	__u8 opts;   /* SG_OPT_* bits */
};

/* A class's firewall mark (`fwmarks` map, same index as `policy`): skb->mark = (mark & ~mask) | (fwmark & mask). */
struct sg_fwmark {
	__u32 mark;
	__u32 mask;
};

/* XDP metadata in front of a packet whose class has a firewall mark; bpf/fwmark.bpf.c (TC ingress) reads it. */
#define SG_MARK_MAGIC 0x4b4d4753 /* the bytes SGMK */
struct sg_mark_meta {
	__u32 magic;
	__u32 mark;
	__u32 mask;
};

/* A decision of the daemon, applied in the kernel by xdp_verdict (run through BPF_PROG_TEST_RUN with this struct as
 * the packet): only the fields named here change, so packets counted meanwhile by other CPUs are never overwritten. */
#define SG_V_MAGIC 0x56444753 /* the bytes SGDV */
#define SG_V_CLASS 1 /* set cls and reason (and the flags in set_flags) */
#define SG_V_FLAGS 2 /* set set_flags, clear clear_flags; class untouched */
struct sg_verdict {
	struct sg_flow_key key;
	__u32 magic;
	__u32 reason;
	__u8 op;    /* SG_V_* */
	__u8 cls;
	__u8 set_flags;
	__u8 clear_flags;
	__u32 _pad;
};

/* chained: ifindex -> the foreign XDP program skyguard chains to on that interface, and the attach flags it had, so
 * that a detach (daemon stop, `skyguardd --detach`, `make uninstall`) puts it back as it was. Userspace only. */
struct sg_chain {
	__u32 prog_id;
	__u32 xdp_flags;
};

/* DSCP by media kind (the `qos` map, one entry per generation): a flow with an endpoint port in [lo, hi] of a kind
 * is marked with that kind's DSCP, the kinds tried in order (audio, video, screen sharing). */
#define SG_QOS_KINDS 3
struct sg_qos {
	__u16 lo[SG_QOS_KINDS];
	__u16 hi[SG_QOS_KINDS];
	__u8 dscp[SG_QOS_KINDS];
	__u8 _pad[3];
}; /* 18 bytes */

/* A UDP endpoint that a strong signature proved Skype (the `endpoints` LRU): key and value. */
struct sg_ep_key {
	__u8 addr[16]; /* IPv4 mapped, as in sg_flow_key */
	__u16 port;
	__u16 vlan;
}; /* 20 bytes */
struct sg_ep {
	__u64 proved_ns; /* flow clock of its last proof; it counts for SG_EP_TTL_S from then */
	__u32 reason;    /* the SG_R_* of the proving flow's decision */
	__u8 cls;        /* the proving flow's class */
	__u8 _pad[3];
}; /* 16 bytes */

/* Global config; the daemon flips `gen` to swap policies atomically. */
struct sg_config {
	__u32 gen;      /* active generation (0/1) of the policy map and LPM keys */
	__u32 flags;
	__u64 reload_ns; /* when the active generation was written */
};

/* LPM keys carry the generation as their first byte: prefixlen = 8 + address prefix length. */
struct sg_lpm4 {
	__u32 prefixlen;
	__u8 gen;
	__u8 addr[4];
} __attribute__((packed));
struct sg_lpm6 {
	__u32 prefixlen;
	__u8 gen;
	__u8 addr[16];
} __attribute__((packed));

/* LPM value: where the prefix came from, and when it expires (0 = never; the daemon sweeps). */
#define SG_SRC_POLICY  1
#define SG_SRC_LEARNED 2
#define SG_SRC_MANUAL  3
struct sg_prefix {
	__u32 source;
	__u32 _pad;
	__u64 expires_ns;
};

/* Every event starts with this header. */
struct sg_ev_hdr {
	__u8 type;   /* SG_EV_* */
	__u8 dir;    /* direction of the packet that caused it */
	__u16 _pad;
	__u32 place; /* replay build: that packet's place in its capture (struct sg_meta); 0 live */
	__u64 ts_ns;
	struct sg_flow_key key;
}; /* 56 bytes */

struct sg_ev_classified {
	struct sg_ev_hdr hdr;
	__u8 old_cls;
	__u8 new_cls;
	__u16 _pad;
	__u32 reason;
	__u64 pkts; /* packets of the flow so far, both directions */
}; /* 72 bytes */

struct sg_ev_sample {
	struct sg_ev_hdr hdr;
	__u16 payload_len; /* the packet's L4 payload length */
	__u16 caplen;      /* bytes in data[] */
	__u16 inspected;   /* the flow's inspected count at this packet */
	__u16 _pad;
	__u8 data[SG_SAMPLE_BYTES];
}; /* 128 bytes */

/* SG_EV_DNS, SG_EV_TLS and SG_EV_HTTP */
struct sg_ev_big {
	struct sg_ev_hdr hdr;
	__u16 payload_len;
	__u16 caplen;
	__u32 _pad;
	__u8 data[SG_BIG_BYTES];
}; /* 576 bytes */

/* XDP metadata a replay hands to the program (BPF_PROG_TEST_RUN ctx data_meta): the packet's capture timestamp and its
 * place in the capture. A record that waits in the ring buffer past later packets (struct sg_batch) still says which
 * packet left it, so that the replay reports a decision at the packet that made it. */
#define SG_META_MAGIC 0x5347544d /* the bytes SGTM */
struct sg_meta {
	__u32 magic;
	__u32 place; /* the packet's place in its capture, 1 for the first: its records carry it (sg_ev_hdr) */
	__u64 ts_ns;
};

/* A replay's batch (replay build, offline/walk.c): up to SG_BATCH_MAX packets in one BPF_PROG_TEST_RUN, so that the
 * run's fixed cost (a syscall, the kernel's buffer and timer set-up) is paid once for them all. The packets sit in the
 * test run's buffer last one first, each after a gap of SG_BATCH_GAP bytes; the program runs the first (the buffer's
 * tail), then moves the frame's head back onto the next one, cuts its tail off and runs itself again through the
 * `replay_next` tail call. Moving the head moves the metadata with it (bpf_xdp_adjust_head): it lands in the gap, not
 * on the bytes of the packet in front. A run ends after a packet that left a record which may lead the daemon to write
 * into the kernel (`stop`: any but a sample below SG_SAMPLES_MIN and a `classified` record of a decision outside
 * SG_STRONG_REASONS or not on UDP), so the slow path still acts before the next packet, as it does after every single
 * run; and once the records waiting in the ring buffer (`waiting`) pass a quarter of it, so that none is lost to a
 * full ring. n < 2: not a batch, the program runs the one packet it is given. */
#define SG_BATCH_MAX   32   /* packets per test run: the kernel allows 33 tail calls (MAX_TAIL_CALL_CNT) */
#define SG_BATCH_BYTES 3072 /* metadata, packets and gaps of one run: linear on every kernel configuration */
#define SG_BATCH_GAP   32   /* in front of each packet: room for the largest XDP metadata (32 bytes) */
struct sg_batch_pkt {
	__u32 len;     /* the frame's length (at least 14, the Ethernet header: head and tail moves need it) */
	__u32 verdict; /* the program's XDP verdict for it, written once it ran */
	__u64 ts_ns;   /* its capture time, put into the metadata before it runs */
};

struct sg_batch {
	__u32 n;    /* packets in this run (the walker); < 2: no batch */
	__u32 done; /* packets run so far (the program) */
	__u32 skip; /* bytes in front of the first packet: the others and their gaps, which follow it in capture order */
	__u32 stop; /* the program: a packet left a record that may decide, or a head/tail/metadata move failed */
	__u32 waiting; /* bytes of records in the ring buffer that did not end a run (the program adds, the walker takes) */
	__u32 place;   /* the first packet's place in its capture (struct sg_meta): packet i's is place + i */
	struct sg_batch_pkt pkt[SG_BATCH_MAX];
};

#endif /* SKYGUARD_H */
