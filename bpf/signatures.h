/* SPDX-License-Identifier: GPL-2.0 */
/* signatures.h: payload tests on the L4 payload (packet pointers, every read bounds-checked against data_end).
 * Wire facts and their sources: docs/signatures.md (STUN RFC 5389, MS-TURN, legacy Skype Start-of-Message, RTP RFC
 * 3550). */
#ifndef SKYGUARD_SIGNATURES_H
#define SKYGUARD_SIGNATURES_H

#include "skyguard.h"

#define SG_STUN_COOKIE   0x2112A442
#define SG_MS_COOKIE_VAL 0x72C64BC6 /* value of MS-TURN's MAGIC-COOKIE attribute 0x000F */
#define SG_STUN_OFF_MASK 0x3ff      /* attributes are looked for in the first 1 KiB of a message */
#define SG_FF10_HDR      12         /* FF 10, length (2), 8-byte session id */

/* Decisive evidence: a flow without any of it after SG_PROBE packets is `other`. RTP alone and SoM data-frame funcs
 * alone are not (random bytes look like them too often); neither is plain STUN (WebRTC, WhatsApp, Zoom, ... use it:
 * Skype's shows Microsoft attributes in its first messages) nor TLS (the daemon decides it by name and overrides). */
#define SG_E_DECISIVE (SG_E_SOM | SG_E_CID | SG_E_MS_ATTR | SG_E_MS_PREFIX | SG_E_PORT12340 | SG_E_FF10 | SG_E_DR_MEDIA)

static __always_inline __u16 sg_be16(const __u8 *p)
{
	return ((__u16)p[0] << 8) | p[1];
}

static __always_inline __u32 sg_be32(const __u8 *p)
{
	return ((__u32)p[0] << 24) | ((__u32)p[1] << 16) | ((__u32)p[2] << 8) | p[3];
}

/* STUN method from a message type (the class bits C1 0x100 and C0 0x010 removed). */
static __always_inline __u16 sg_stun_method(__u16 type)
{
	return ((type & 0x3e00) >> 2) | ((type & 0x00e0) >> 1) | (type & 0x000f);
}

/* Is this attribute type one of the Microsoft (MS-TURN / MS-ICE2) attributes, or nDPI's Skype/Teams list? */
static __always_inline int sg_ms_attr(__u16 at)
{
	switch (at) {
	case 0x8008: /* MS-VERSION */
	case 0x8037: /* MS-APP-ID */
	case 0x8050: /* MS-SEQUENCE-NUMBER */
	case 0x8054: /* CANDIDATE-IDENTIFIER */
	case 0x8055: /* MS-SERVICE-QUALITY */
	case 0x8070: /* MS-IMPLEMENTATION-VERSION */
	case 0x8095: /* MULTIPLEXED-TURN-SESSION-ID */
	case 0x24DF:
	case 0x3802:
	case 0x8036:
	case 0x0800:
	case 0x8006:
		return 1;
	}
	return 0;
}

/* Per-packet scratch bits (flow.scratch). Results live in map memory rather than in locals: the verifier
 * tracks constants in registers and stack, and every path that sets a different constant would be a separate state. */
#define SG_PK_CHECK     0x01 /* STUN request carried PRIORITY, ICE-CONTROLLED/-CONTROLLING or USE-CANDIDATE */
#define SG_PK_CIDREP    0x02 /* this packet repeated the previous CID */
#define SG_PK_STUN      0x04 /* this packet is STUN/TURN */
#define SG_PK_FUNC      0x08 /* this packet is long enough to carry a SoM func byte */
#define SG_PK_SOM       0x10 /* ... and that func is a valid SoM func */
#define SG_PK_SOM_PROBE 0x20 /* the flow's first packet, and it looks like a legacy SoM probe */
#define SG_PK_MS        0x40 /* this STUN message carried a Microsoft attribute */

/* STUN/TURN message at p (len bytes of payload). Returns 1 when it parses; ORs SG_S_* bits into *sb (map memory) and
 * SG_PK_CHECK into *pkf. */
static __always_inline int sg_stun(__u8 *p, __u32 len, void *data_end, __u8 *sb, __u8 *pkf)
{
	__u16 type, mlen, method;
	__u32 off, end;

	if (len < 20 || (void *)(p + 20) > data_end)
		return 0;
	type = sg_be16(p);
	mlen = sg_be16(p + 2);
	if ((type & 0xc000) || (mlen & 3) || 20 + (__u32)mlen > len)
		return 0;
	if (sg_be32(p + 4) == SG_STUN_COOKIE)
		*sb |= SG_S_COOKIE;
	else if (20 + (__u32)mlen != len) /* MS-TURN without the cookie: the message must fill the payload */
		return 0;

	if (type == 0x0001)
		*sb |= SG_S_REQ;
	else if (type == 0x0101 || type == 0x0111)
		*sb |= SG_S_RESP;
	method = sg_stun_method(type);
	switch (method) {
	case 0x003: /* allocate */
	case 0x004: /* refresh */
	case 0x006: /* send */
	case 0x007: /* data */
	case 0x008: /* create-permission */
	case 0x009: /* channel-bind */
		*sb |= SG_S_TURN;
	}

	off = 20;
	end = 20 + (__u32)mlen;
#pragma unroll
	for (int i = 0; i < SG_STUN_ATTR_MAX; i++) {
		__u8 *a;
		__u16 at, alen;
		__u32 o;

		if (off + 4 > end || off > SG_STUN_OFF_MASK)
			break;
		o = off;
		asm volatile("" : "+r"(o)); /* keep the mask: the verifier needs the bound on this register */
		a = p + (o & SG_STUN_OFF_MASK);
		if ((void *)(a + 4) > data_end)
			break;
		at = sg_be16(a);
		alen = sg_be16(a + 2);
		if (sg_ms_attr(at)) {
			*pkf |= SG_PK_MS;
		} else if (at == 0x000F) { /* MS-TURN MAGIC-COOKIE: only with its fixed value */
			if ((void *)(a + 8) <= data_end && alen >= 4 && sg_be32(a + 4) == SG_MS_COOKIE_VAL)
				*pkf |= SG_PK_MS;
		} else if (at == 0x0024 || at == 0x8029 || at == 0x802A || at == 0x0025) {
			*pkf |= SG_PK_CHECK; /* PRIORITY, ICE-CONTROLLED, ICE-CONTROLLING, USE-CANDIDATE */
		}
		off += 4 + (((__u32)alen + 3) & ~3U);
	}
	if (*pkf & SG_PK_MS)
		*sb |= SG_S_MS;
	if (type == 0x0001 && (*pkf & SG_PK_CHECK))
		*sb |= SG_S_CHECK;
	/* a Binding request with Microsoft attributes of its own: a Teams/Skype agent's connectivity check, whether or
	 * not it carries ICE's optional PRIORITY / ICE-CONTROLLING (MS-ICE2 agents may leave them out) */
	if (type == 0x0001 && (*pkf & SG_PK_MS))
		*sb |= SG_S_MSREQ;
	return 1;
}

/* RTP v2 header (not RTCP 72..76). Returns 1 and the payload type. */
static __always_inline int sg_rtp(__u8 *p, __u32 len, void *data_end, __u8 *pt)
{
	__u8 t;

	if (len < 12 || (void *)(p + 12) > data_end)
		return 0;
	if ((p[0] >> 6) != 2)
		return 0;
	t = p[1] & 0x7f;
	if (t >= 72 && t <= 76)
		return 0;
	*pt = t;
	return 1;
}

/* Legacy SoM func values seen by Bonfiglio et al.: 0x02/0x03 signalling, 0x07 NAK, 0x0d data, 0x0f fragment. */
static __always_inline int sg_som_valid(__u8 func)
{
	return func == 0x02 || func == 0x03 || func == 0x07 || func == 0x0d || func == 0x0f;
}

/* First bytes that a SoM first packet must not start with: nDPI's old rule (0x00, 0x30 ASN.1, 0x80 RTP, 0xc0/0xc1),
 * STUN's 0x01, and DTLS records (0x16/0x17 followed by version 0xfe..). A random message ID may start 0x16 (captured
 * legacy Skype has a flow that starts 16 97 02), so 0x16 alone is not enough to refuse. */
static __always_inline int sg_som_bad_first(__u8 b0, __u8 b1)
{
	if ((b0 == 0x16 || b0 == 0x17) && b1 == 0xfe)
		return 1;
	return b0 == 0x00 || b0 == 0x01 || b0 == 0x30 || b0 == 0x80 || b0 == 0xc0 || b0 == 0xc1;
}

/* A packet that looks like common RTP: v2 without padding or CSRCs (first byte 0x80, or 0x90 with an extension) and a
 * G.711/G.722/G.729 or dynamic payload type. The legacy SoM message ID is random, so v2 alone (a quarter of all IDs,
 * and captured legacy probes often start 0x9b..0x9e) must not count as RTP. */
static __always_inline int sg_rtp_looking(__u8 *p, __u32 len, void *data_end)
{
	__u8 t;

	if (len < 12 || (void *)(p + 12) > data_end || (p[0] & 0xef) != 0x80)
		return 0;
	t = p[1] & 0x7f;
	return t == 0 || t == 8 || t == 9 || t == 18 || t >= 96;
}

#endif /* SKYGUARD_SIGNATURES_H */
