/* skyguard replay's packet loop: walks a memory-mapped pcap or pcapng capture and hands every packet to the XDP
 * program through BPF_PROG_TEST_RUN, with its capture timestamp and place in the XDP metadata (struct sg_meta).
 *
 * Compiled by skyguard itself (offline/fastwalk.py, with the system's gcc, into a cache directory) and called through
 * ctypes. It returns to Python only when the program's ring buffer holds a record that may lead the slow path to
 * write into the kernel after a run (the slow path must see it, and write its decisions back, before the next packet:
 * the order the per-packet Python loop gives), at the end of the capture, on a capture error, or after about
 * `max_packets` packets (progress). Records that cannot (a flow's early samples, a `classified` record of a decision
 * outside SG_STRONG_REASONS) wait across runs, up to half of `ev`; each carries its packet's place in the capture. It
 * hands the records over itself: it consumes them from the ring buffer as libbpf's ring_buffer__consume would, into
 * `ev` (a length, then the record, each), so that Python reads all of a run's records from one buffer instead of one
 * callback per record.
 *
 * Batches: given the replay build's `batch` map, up to SG_BATCH_MAX packets go into one test run (struct sg_batch in
 * bpf/skyguard.h says how the program walks them). The program ends a batch after a packet that left a record which
 * may lead the slow path to write into the kernel, so the slow path acts on the same records, in the same order and
 * before the same packets, as with one run per packet; packets read ahead wait in `stage` for the next run. A packet
 * shorter than an Ethernet header, or too long for a batch, runs alone.
 *
 * Capture parsing mirrors offline/pcap.py exactly, error messages and byte offsets included: the identical-output
 * test (tests/bpf/test_replay_fast.py) holds the two to each other. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "skyguard.h" /* struct sg_batch, struct sg_meta: the layouts the program reads (needs linux/types.h) */

/* The part of union bpf_attr that BPF_PROG_TEST_RUN reads (UAPI, stable); defined here so that the helper needs
 * only the C library's headers. */
struct sgw_test_attr {
	uint32_t prog_fd;
	uint32_t retval;
	uint32_t data_size_in;
	uint32_t data_size_out;
	uint64_t data_in;
	uint64_t data_out;
	uint32_t repeat;
	uint32_t duration;
	uint32_t ctx_size_in;
	uint32_t ctx_size_out;
	uint64_t ctx_in;
	uint64_t ctx_out;
	uint32_t flags;
	uint32_t cpu;
	uint32_t batch_size;
	uint32_t _pad;
};
#define SGW_BPF_PROG_TEST_RUN 10
#define SGW_BPF_OBJ_GET_INFO_BY_FD 15

/* The ring buffer's record header (UAPI linux/bpf.h: BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT,
 * BPF_RINGBUF_HDR_SZ): a 32-bit length whose top bits say "being written" and "discarded", 8 bytes in all. */
#define RB_BUSY (1u << 31)
#define RB_DISCARD (1u << 30)
#define RB_HDR 8
#define EV_CAP 65536 /* bytes of records handed over per return; the rest wait in the ring buffer for the next */
_Static_assert(EV_CAP >= 4 + sizeof(struct sg_ev_big), "`ev` holds the largest record");

#define META_LEN 16
#define ETH_LEN 14
#define MAX_SNAP 262144u

enum { SGW_EVENTS = 1, SGW_END = 2, SGW_PAUSE = 3, SGW_ECAPTURE = -1, SGW_ERUN = -2 };

struct sgw_iface {
	uint32_t linktype;
	uint32_t snaplen;
	int binary; /* units are 2^-exp s, else 10^-exp s */
	uint32_t exp;
	__int128 offset_ns;
};

/* The program's ring buffer as libbpf maps it (kernel/bpf/ringbuf.c): the consumer position's page read-write, then
 * the producer position's page and the data pages, which the kernel maps twice over so that a record never wraps,
 * read-only. Mapped once for a replay's captures (the kernel maps every page of a mapping at once). */
struct sgw_ring {
	volatile uint64_t *cons;
	const volatile uint64_t *prod;
	const uint8_t *data;
	uint64_t mask;
	void *cons_map, *map;
	size_t map_len, page;
};

/* Shared with Python (fastwalk.py mirrors the public fields, in this order). */
struct sgw {
	/* results, read by Python */
	uint64_t packets;          /* packets run so far */
	uint64_t verdicts[8];      /* XDP verdicts 0..4, [7]: any other value */
	uint64_t kernel_ns;        /* sum of the kernel's per-run durations */
	uint64_t err_off;          /* SGW_ECAPTURE: byte offset of the bad header, record or block */
	int32_t err_no;            /* SGW_ERUN: errno of the failed test run */
	char err[240];             /* SGW_ECAPTURE: what is wrong (pcap.py's message) */
	uint64_t runs;             /* test runs made (packets / runs: the batches' mean size) */
	const uint8_t *ev;         /* SGW_EVENTS: the records taken from the ring buffer, each a uint32 length and then */
	uint64_t ev_len;           /* the record itself; ev_len bytes in all */
	/* private */
	const uint8_t *buf;
	uint64_t size;
	uint64_t off;
	int fd;
	int prog_fd;
	int pcapng;
	int big;                   /* byte order of the pcap file or the current pcapng section */
	int started;
	uint32_t linktype;         /* pcap */
	uint32_t limit;            /* pcap */
	uint64_t mult;             /* pcap */
	uint32_t nifaces;
	uint32_t cap_ifaces;
	struct sgw_iface *ifaces;
	uint64_t seen_lt[4];       /* link types already checked (pcap.py converts lazily: first use raises) */
	uint8_t *scratch;
	size_t scratch_cap;
	struct sgw_ring *ring;     /* the program's ring buffer, mapped by the caller (sgw_ring_open) */
	uint8_t *ev_buf;
	volatile struct sg_batch *batch; /* the program's batch map, mmapped; NULL: one packet per test run */
	size_t batch_len;
	/* packets read from the capture and not run yet, in order: frames back to back in `stage` */
	uint8_t *stage;
	size_t stage_used, stage_cap;
	uint32_t nstage;
	uint32_t slen[SG_BATCH_MAX + 1];
	uint64_t sts[SG_BATCH_MAX + 1];
	int pending;               /* what the capture said after the staged packets: 0, SGW_END, SGW_ECAPTURE, SGW_ERUN */
	int stopped;               /* the last run ended on a record that may decide (sg_batch.stop; always, without
	                            * a batch map) */
	uint8_t run_buf[SG_BATCH_BYTES];
};

_Static_assert(sizeof(struct sg_meta) == META_LEN, "the metadata the program reads");

static uint32_t rd32(const struct sgw *w, uint64_t off, int big)
{
	uint32_t v;

	memcpy(&v, w->buf + off, 4);
	return big ? __builtin_bswap32(v) : v;
}

static uint16_t rd16(const struct sgw *w, uint64_t off, int big)
{
	uint16_t v;

	memcpy(&v, w->buf + off, 2);
	return big ? __builtin_bswap16(v) : v;
}

__attribute__((format(printf, 3, 4))) static int fail(struct sgw *w, uint64_t off, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->err, sizeof(w->err), fmt, ap);
	va_end(ap);
	w->err_off = off;
	return SGW_ECAPTURE;
}

static int lt_supported(uint32_t lt)
{
	switch (lt) {
	case 0: case 1: case 12: case 14: case 101: case 108: case 113: case 228: case 229: case 276:
		return 1;
	}
	return 0;
}

/* pcap.py's _converter: an unsupported link type fails at the first record that uses it. */
static int check_lt(struct sgw *w, uint64_t off, uint32_t lt)
{
	for (int i = 0; i < 4; i++)
		if (w->seen_lt[i] == (uint64_t)lt + 1)
			return 0;
	if (!lt_supported(lt))
		return fail(w, off, "unsupported link type %u", lt);
	for (int i = 0; i < 4; i++)
		if (!w->seen_lt[i]) {
			w->seen_lt[i] = (uint64_t)lt + 1;
			break;
		}
	return 0;
}

static void *grow(struct sgw *w, size_t need)
{
	if (need > w->scratch_cap) {
		size_t cap = need < 65536 ? 65536 : need;
		uint8_t *p = realloc(w->scratch, cap);

		if (!p)
			return NULL;
		w->scratch = p;
		w->scratch_cap = cap;
	}
	return w->scratch;
}

static uint16_t ip_ethertype(const uint8_t *p, uint64_t n)
{
	if (n) {
		if ((p[0] >> 4) == 4)
			return 0x0800;
		if ((p[0] >> 4) == 6)
			return 0x86DD;
	}
	return 0x88B5;
}

static uint16_t null_ethertype(uint32_t fam, const uint8_t *p, uint64_t n)
{
	if (fam == 2)
		return 0x0800;
	if (fam == 10 || fam == 24 || fam == 28 || fam == 30)
		return 0x86DD;
	return ip_ethertype(p, n);
}

/* The frame pcap.py's converters make of `len` captured bytes, after room for the metadata; returns its length. */
/* A Linux cooked capture's header (`hlen` bytes, protocol field at `poff`): the payload after it and its ethertype;
 * a protocol below 0x0600 is not an ethertype, so the payload's IP version decides. Too short: 0x88B5, no payload. */
static uint16_t cooked_ethertype(const uint8_t *d, uint64_t len, uint64_t hlen, uint64_t poff, const uint8_t **pl,
				 uint64_t *pn)
{
	uint16_t proto;

	if (len < hlen) {
		*pn = 0;
		return 0x88B5;
	}
	proto = d[poff] << 8 | d[poff + 1];
	*pl = d + hlen, *pn = len - hlen;
	return proto >= 0x0600 ? proto : ip_ethertype(*pl, *pn);
}

static int64_t build_frame(struct sgw *w, uint32_t lt, const uint8_t *d, uint64_t len)
{
	static const uint8_t macs[12] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1};
	const uint8_t *pl = d;
	uint64_t pn = len;
	int32_t et = -1; /* -1: Ethernet as captured */
	uint8_t *f;

	switch (lt) {
	case 1:
		break;
	case 101: case 12: case 14:
		et = ip_ethertype(d, len);
		break;
	case 228:
		et = 0x0800;
		break;
	case 229:
		et = 0x86DD;
		break;
	case 0: case 108:
		if (len < 4) {
			et = 0x88B5, pn = 0;
		} else {
			uint32_t fam = (uint32_t)d[0] | d[1] << 8 | d[2] << 16 | (uint32_t)d[3] << 24;
			uint32_t be = __builtin_bswap32(fam);

			if (lt == 108 || (fam & 0xFFFF0000u))
				fam = be;
			pl = d + 4, pn = len - 4;
			et = null_ethertype(fam, pl, pn);
		}
		break;
	case 113: /* Linux cooked v1: 16-byte header, protocol at 14 */
		et = cooked_ethertype(d, len, 16, 14, &pl, &pn);
		break;
	case 276: /* Linux cooked v2: 20-byte header, protocol at 0 */
		et = cooked_ethertype(d, len, 20, 0, &pl, &pn);
		break;
	}
	if (et < 0) {
		if (!(f = grow(w, META_LEN + len)))
			return -1;
		memcpy(f + META_LEN, d, len);
		return len;
	}
	if (!(f = grow(w, META_LEN + ETH_LEN + pn)))
		return -1;
	memcpy(f + META_LEN, macs, 12);
	f[META_LEN + 12] = et >> 8;
	f[META_LEN + 13] = et & 0xFF;
	memcpy(f + META_LEN + ETH_LEN, pl, pn);
	return ETH_LEN + pn;
}

/* The next record of a pcap file: 1 and its fields, 0 at the end, SGW_ECAPTURE. */
static int next_pcap(struct sgw *w, uint64_t *ts, const uint8_t **d, uint64_t *len, uint32_t *lt, uint64_t *roff)
{
	uint64_t off = w->off, size = w->size;

	if (off >= size)
		return 0;
	if (off + 16 > size)
		return fail(w, off, "truncated record header (%lu of 16 bytes)", size - off);
	uint32_t sec = rd32(w, off, w->big), frac = rd32(w, off + 4, w->big), incl = rd32(w, off + 8, w->big);

	if (incl > w->limit)
		return fail(w, off, "capture length %u exceeds the largest snapshot length %u", incl, w->limit);
	uint64_t start = off + 16;

	if (start + incl > size)
		return fail(w, off, "truncated packet data (%lu of %u bytes)", size - start, incl);
	*ts = (uint64_t)sec * 1000000000ull + (uint64_t)frac * w->mult;
	*d = w->buf + start;
	*len = incl;
	*lt = w->linktype;
	*roff = off;
	w->off = start + incl;
	return 1;
}

static void parse_idb(struct sgw *w, struct sgw_iface *ifc, uint64_t off, uint64_t end, int big)
{
	ifc->linktype = rd16(w, off + 8, big);
	ifc->snaplen = rd32(w, off + 12, big);
	ifc->binary = 0;
	ifc->exp = 6;
	ifc->offset_ns = 0;
	for (uint64_t o = off + 16; o + 4 <= end;) {
		uint16_t code = rd16(w, o, big), len = rd16(w, o + 2, big);

		if (code == 0 || o + 4 + len > end)
			return;
		if (code == 9 && len >= 1) {
			ifc->binary = !!(w->buf[o + 4] & 0x80);
			ifc->exp = w->buf[o + 4] & 0x7F;
		} else if (code == 14 && len >= 8) {
			uint64_t v;

			memcpy(&v, w->buf + o + 4, 8);
			if (big)
				v = __builtin_bswap64(v);
			ifc->offset_ns = (__int128)(int64_t)v * 1000000000;
		}
		o += 4 + ((len + 3u) & ~3u);
	}
}

static uint64_t iface_ts(const struct sgw_iface *ifc, uint64_t units)
{
	__int128 ns;

	if (!ifc->binary && ifc->exp == 9) {
		ns = (__int128)units;
	} else if (ifc->binary) {
		ns = (__int128)(((unsigned __int128)units * 1000000000u) >> ifc->exp);
	} else if (ifc->exp > 38) {
		ns = 0; /* units * 10^9 < 10^29 <= 10^exp */
	} else {
		unsigned __int128 div = 1;

		for (uint32_t i = 0; i < ifc->exp; i++)
			div *= 10;
		ns = (__int128)(((unsigned __int128)units * 1000000000u) / div);
	}
	return (uint64_t)(ns + ifc->offset_ns);
}

static int next_pcapng(struct sgw *w, uint64_t *ts, const uint8_t **d, uint64_t *len, uint32_t *lt, uint64_t *roff)
{
	uint64_t size = w->size;

	while (w->off < size) {
		uint64_t off = w->off;

		if (off + 12 > size)
			return fail(w, off, "truncated block header (%lu bytes left)", size - off);
		uint32_t btype = rd32(w, off, 0);

		if (btype == 0x0A0D0D0A) {
			uint32_t bom = rd32(w, off + 8, 0);

			if (bom == 0x1A2B3C4D)
				w->big = 0;
			else if (bom == 0x4D3C2B1A)
				w->big = 1;
			else
				return fail(w, off, "bad pcapng byte-order magic 0x%08x", bom);
			w->nifaces = 0;
		} else if (off == 0) {
			return fail(w, 0, "pcapng file does not start with a section header block");
		} else {
			btype = rd32(w, off, w->big);
		}
		uint32_t blen = rd32(w, off + 4, w->big);

		if (blen < 12 || blen % 4)
			return fail(w, off, "bad block length %u (block type 0x%08x)", blen, btype);
		if (off + blen > size)
			return fail(w, off, "block length %u runs past the end of the file (%lu left)", blen, size - off);
		if (rd32(w, off + blen - 4, w->big) != blen)
			return fail(w, off, "trailing block length does not match %u", blen);
		uint64_t body_end = off + blen - 4;

		w->off = off + blen;
		if (btype == 1) {
			if (blen < 20)
				return fail(w, off, "interface description block too short (%u bytes)", blen);
			if (w->nifaces == w->cap_ifaces) {
				uint32_t cap = w->cap_ifaces ? 2 * w->cap_ifaces : 8;
				struct sgw_iface *p = realloc(w->ifaces, cap * sizeof(*p));

				if (!p)
					return fail(w, off, "out of memory");
				w->ifaces = p;
				w->cap_ifaces = cap;
			}
			parse_idb(w, &w->ifaces[w->nifaces++], off, body_end, w->big);
		} else if (btype == 6 || btype == 2) {
			uint32_t ifid, hi, lo, caplen;

			if (blen < 32)
				return fail(w, off, "packet block too short (%u bytes)", blen);
			if (btype == 6) {
				ifid = rd32(w, off + 8, w->big);
			} else {
				ifid = rd16(w, off + 8, w->big);
			}
			hi = rd32(w, off + 12, w->big);
			lo = rd32(w, off + 16, w->big);
			caplen = rd32(w, off + 20, w->big);
			if (ifid >= w->nifaces)
				return fail(w, off, "packet on interface %u, but only %u described", ifid, w->nifaces);
			if (off + 28 + (uint64_t)caplen > body_end)
				return fail(w, off, "capture length %u exceeds the block (%u bytes)", caplen, blen);
			*ts = iface_ts(&w->ifaces[ifid], (uint64_t)hi << 32 | lo);
			*d = w->buf + off + 28;
			*len = caplen;
			*lt = w->ifaces[ifid].linktype;
			*roff = off;
			return 1;
		} else if (btype == 3) {
			if (!w->nifaces)
				return fail(w, off, "simple packet block before any interface description");
			if (blen < 16)
				return fail(w, off, "simple packet block too short (%u bytes)", blen);
			uint64_t caplen = rd32(w, off + 8, w->big);

			if (caplen > body_end - (off + 12))
				caplen = body_end - (off + 12);
			if (w->ifaces[0].snaplen && caplen > w->ifaces[0].snaplen)
				caplen = w->ifaces[0].snaplen;
			*ts = 0;
			*d = w->buf + off + 12;
			*len = caplen;
			*lt = w->ifaces[0].linktype;
			*roff = off;
			return 1;
		}
	}
	return 0;
}

/* The file's header: pcap.py's _raw_records and _pcap before the first record. */
static int start(struct sgw *w)
{
	w->started = 1;
	if (w->size < 4)
		return fail(w, 0, "file too short for a capture (%lu bytes)", w->size);
	uint32_t le = rd32(w, 0, 0), be = rd32(w, 0, 1);

	if (le == 0x0A0D0D0A) {
		w->pcapng = 1;
		return 0;
	}
	if (le == 0xA1B2C3D4 || le == 0xA1B23C4D)
		w->big = 0;
	else if (be == 0xA1B2C3D4 || be == 0xA1B23C4D)
		w->big = 1;
	else
		return fail(w, 0, "bad magic 0x%02x%02x%02x%02x: neither pcap nor pcapng", w->buf[0], w->buf[1], w->buf[2],
			    w->buf[3]);
	w->mult = (w->big ? be : le) == 0xA1B23C4D ? 1 : 1000;
	if (w->size < 24)
		return fail(w, 0, "truncated pcap file header (%lu of 24 bytes)", w->size);
	uint32_t snaplen = rd32(w, 16, w->big);

	w->linktype = rd32(w, 20, w->big) & 0xFFFF;
	if (check_lt(w, 20, w->linktype))
		return SGW_ECAPTURE;
	w->limit = snaplen > MAX_SNAP ? snaplen : MAX_SNAP;
	w->off = 24;
	return 0;
}

/* Map ring buffer map `rb_fd` into `r`: 0, or -errno with nothing left mapped. */
int sgw_ring_open(struct sgw_ring *r, int rb_fd)
{
	struct {
		uint32_t bpf_fd, info_len;
		uint64_t info;
	} ia = {(uint32_t)rb_fd, 0, 0};
	uint32_t info[20] = {0}; /* struct bpf_map_info: type, id, key_size, value_size, max_entries, ... */
	int e;

	memset(r, 0, sizeof(*r));
	r->page = sysconf(_SC_PAGESIZE);
	ia.info_len = sizeof(info);
	ia.info = (uint64_t)(uintptr_t)info;
	if (syscall(__NR_bpf, SGW_BPF_OBJ_GET_INFO_BY_FD, &ia, sizeof(ia)) != 0)
		return -errno;
	if (info[0] != 27 || !info[4] || (info[4] & (info[4] - 1)))
		return -EINVAL; /* not a ring buffer (BPF_MAP_TYPE_RINGBUF, whose size is a power of two) */
	r->mask = info[4] - 1;
	r->cons_map = mmap(NULL, r->page, PROT_READ | PROT_WRITE, MAP_SHARED, rb_fd, 0);
	if (r->cons_map == MAP_FAILED) {
		r->cons_map = NULL;
		return -errno;
	}
	r->map_len = r->page + 2 * (size_t)info[4];
	r->map = mmap(NULL, r->map_len, PROT_READ, MAP_SHARED, rb_fd, r->page);
	if (r->map == MAP_FAILED) {
		e = errno;
		munmap(r->cons_map, r->page);
		memset(r, 0, sizeof(*r));
		return -e;
	}
	r->cons = (volatile uint64_t *)r->cons_map;
	r->prod = (const volatile uint64_t *)r->map;
	r->data = (const uint8_t *)r->map + r->page;
	return 0;
}

void sgw_ring_close(struct sgw_ring *r)
{
	if (r->map)
		munmap(r->map, r->map_len);
	if (r->cons_map)
		munmap(r->cons_map, r->page);
	memset(r, 0, sizeof(*r));
}

size_t sgw_ring_size(void)
{
	return sizeof(struct sgw_ring);
}

/* Bytes between the ring buffer's consumer and producer: the records waiting, with their headers. */
static uint64_t ring_held(const struct sgw_ring *r)
{
	return __atomic_load_n(r->prod, __ATOMIC_ACQUIRE) - __atomic_load_n(r->cons, __ATOMIC_ACQUIRE);
}

/* Open `path` for program `prog_fd`, its ring buffer `ring` (sgw_ring_open; it must outlive the walk) and batch map
 * `batch_fd` (-1: none, one packet per test run); 0, or -errno with nothing left open. */
int sgw_open(struct sgw *w, const char *path, int prog_fd, struct sgw_ring *ring, int batch_fd)
{
	struct stat st;
	long page = sysconf(_SC_PAGESIZE);

	memset(w, 0, sizeof(*w));
	w->prog_fd = prog_fd;
	w->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (w->fd < 0)
		return -errno;
	if (fstat(w->fd, &st) < 0)
		goto err;
	w->size = st.st_size;
	if (w->size) {
		void *p = mmap(NULL, w->size, PROT_READ, MAP_PRIVATE, w->fd, 0);

		if (p == MAP_FAILED)
			goto err;
		madvise(p, w->size, MADV_SEQUENTIAL);
		w->buf = p;
	}
	w->ring = ring;
	w->ev_buf = malloc(EV_CAP);
	if (!w->ev_buf)
		goto err;
	w->ev = w->ev_buf;
	if (batch_fd >= 0) {
		size_t len = (sizeof(struct sg_batch) + page - 1) / page * page;
		void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, batch_fd, 0);

		if (p == MAP_FAILED)
			goto err;
		w->batch = p;
		w->batch_len = len;
		w->batch->n = 0;
		w->batch->waiting = (uint32_t)ring_held(ring);
	}
	return 0;
err:;
	int e = errno;

	if (w->buf)
		munmap((void *)w->buf, w->size);
	free(w->ev_buf);
	w->ev_buf = NULL;
	close(w->fd);
	w->buf = NULL;
	w->fd = -1;
	return -e;
}

/* For the Python side's check that its mirror of the struct is large enough. */
size_t sgw_size(void)
{
	return sizeof(struct sgw);
}

void sgw_close(struct sgw *w)
{
	if (w->buf)
		munmap((void *)w->buf, w->size);
	if (w->batch) {
		w->batch->n = 0; /* the program's next single runs are not taken for a batch */
		munmap((void *)w->batch, w->batch_len);
	}
	if (w->fd >= 0)
		close(w->fd);
	free(w->scratch);
	free(w->stage);
	free(w->ifaces);
	free(w->ev_buf);
	w->buf = NULL;
	w->ev_buf = NULL;
	w->ev = NULL;
	w->ring = NULL;
	w->batch = NULL;
	w->fd = -1;
	w->scratch = NULL;
	w->stage = NULL;
	w->ifaces = NULL;
}

/* Read the capture's next packet into the stage: 1, or what ended the reading (SGW_END, SGW_ECAPTURE, SGW_ERUN). */
static int stage_one(struct sgw *w)
{
	uint64_t ts = 0, len = 0, roff = 0;
	const uint8_t *d = NULL;
	uint32_t lt = 0;
	int rc = w->pcapng ? next_pcapng(w, &ts, &d, &len, &lt, &roff) : next_pcap(w, &ts, &d, &len, &lt, &roff);

	if (rc < 0)
		return rc;
	if (rc == 0)
		return SGW_END;
	if (w->pcapng && check_lt(w, roff, lt))
		return SGW_ECAPTURE;
	int64_t flen = build_frame(w, lt, d, len);

	if (flen < 0 || w->stage_used + flen > w->stage_cap) {
		size_t cap = w->stage_cap ? w->stage_cap : 2 * SG_BATCH_BYTES;
		uint8_t *p;

		while (flen >= 0 && cap < w->stage_used + flen)
			cap *= 2;
		if (flen < 0 || !(p = realloc(w->stage, cap))) {
			w->err_no = ENOMEM;
			return SGW_ERUN;
		}
		w->stage = p;
		w->stage_cap = cap;
	}
	memcpy(w->stage + w->stage_used, w->scratch + META_LEN, flen);
	w->stage_used += flen;
	w->slen[w->nstage] = flen;
	w->sts[w->nstage] = ts;
	w->nstage++;
	return 1;
}

/* How many staged packets the next test run takes: as many as fit a batch, or 1 (a packet that runs alone). */
static uint32_t batch_size(const struct sgw *w)
{
	uint32_t k = 0;
	uint64_t bytes = META_LEN;

	if (!w->batch)
		return 1;
	while (k < w->nstage && k < SG_BATCH_MAX && w->slen[k] >= ETH_LEN) {
		uint64_t next = bytes + (k ? SG_BATCH_GAP : 0) + w->slen[k];

		if (next > SG_BATCH_BYTES)
			break;
		bytes = next;
		k++;
	}
	return k ? k : 1;
}

/* One test run of the first `k` staged packets; their verdicts counted. Returns how many ran, or SGW_ERUN. */
static int64_t run_staged(struct sgw *w, uint32_t k)
{
	uint32_t magic = SG_META_MAGIC, place = (uint32_t)(w->packets + 1), total = 0;
	uint8_t *f = w->run_buf;
	struct sgw_test_attr a;
	uint32_t ctx[6] = {META_LEN, 0, 0, 0, 0, 0}; /* struct xdp_md */
	uint64_t ran;

	memcpy(f, &magic, 4);
	memcpy(f + 4, &place, 4); /* the first packet's place in the capture (struct sg_meta) */
	memcpy(f + 8, &w->sts[0], 8);
	memset(&a, 0, sizeof(a));
	a.prog_fd = w->prog_fd;
	a.repeat = 1;
	a.ctx_in = (uint64_t)(uintptr_t)ctx;
	a.ctx_size_in = sizeof(ctx);
	if (w->batch)
		w->batch->stop = 0;
	if (k == 1) {
		/* alone: the packet as staged (it may be longer than a batch), after the metadata in scratch */
		memcpy(w->scratch, f, META_LEN);
		memcpy(w->scratch + META_LEN, w->stage, w->slen[0]);
		f = w->scratch;
		total = w->slen[0];
		if (w->batch)
			w->batch->n = 0;
	} else {
		/* last packet first, each but the last after a gap: the program starts at the buffer's tail and moves the
		 * frame forwards in the capture (struct sg_batch) */
		uint32_t off, pos = 0;

		for (uint32_t j = 0; j < k; j++)
			total += w->slen[j] + (j ? SG_BATCH_GAP : 0);
		off = META_LEN + total;
		for (uint32_t j = 0; j < k; j++) {
			off -= w->slen[j];
			memcpy(f + off, w->stage + pos, w->slen[j]);
			if (j + 1 < k) {
				off -= SG_BATCH_GAP;
				memset(f + off, 0, SG_BATCH_GAP);
			}
			pos += w->slen[j];
			w->batch->pkt[j].len = w->slen[j];
			w->batch->pkt[j].verdict = 0;
			w->batch->pkt[j].ts_ns = w->sts[j];
		}
		w->batch->skip = total - w->slen[0];
		w->batch->place = place;
		w->batch->done = 0;
		w->batch->n = k;
	}
	ctx[1] = META_LEN + total;
	a.data_in = (uint64_t)(uintptr_t)f;
	a.data_size_in = META_LEN + total;
	if (syscall(__NR_bpf, SGW_BPF_PROG_TEST_RUN, &a, sizeof(a)) != 0) {
		int e = errno;

		if (w->batch)
			w->batch->n = 0;
		/* a kernel that refuses this batch's buffer: the first packet alone says whether the packet is the cause.
		 * A test run that fails has not run the program (with repeat 1 and nothing to copy out, the kernel checks its
		 * input and returns before the run), so no packet runs twice. */
		if (k > 1)
			return run_staged(w, 1);
		w->err_no = e;
		return SGW_ERUN;
	}
	w->kernel_ns += a.duration;
	w->runs++;
	w->stopped = !w->batch || w->batch->stop;
	if (k == 1) {
		w->verdicts[a.retval < 5 ? a.retval : 7]++;
		ran = 1;
	} else {
		ran = w->batch->done;
		w->batch->n = 0;
		if (ran > k)
			ran = k;
		for (uint32_t j = 0; j < ran; j++) {
			uint32_t v = w->batch->pkt[j].verdict;

			w->verdicts[v < 5 ? v : 7]++;
		}
		if (!ran) /* the frame could not move onto the first packet: the kernel refused this batch's layout */
			return run_staged(w, 1);
	}
	w->packets += ran;
	/* the packets that ran leave the stage */
	uint32_t bytes = 0;

	for (uint32_t j = 0; j < ran; j++)
		bytes += w->slen[j];
	memmove(w->stage, w->stage + bytes, w->stage_used - bytes);
	w->stage_used -= bytes;
	memmove(w->slen, w->slen + ran, (w->nstage - ran) * sizeof(w->slen[0]));
	memmove(w->sts, w->sts + ran, (w->nstage - ran) * sizeof(w->sts[0]));
	w->nstage -= ran;
	return ran;
}

/* Move the ring buffer's records into `ev` (what fits), consuming them as libbpf's ringbuf_process_ring does:
 * acquire loads of the producer position and of each header, a record still being written ends the walk, discarded
 * ones are skipped, and the consumer position is released after each record. Returns the bytes now in `ev`. */
static uint64_t take_records(struct sgw *w)
{
	struct sgw_ring *r = w->ring;
	uint64_t cons = __atomic_load_n(r->cons, __ATOMIC_ACQUIRE);
	uint64_t prod = __atomic_load_n(r->prod, __ATOMIC_ACQUIRE);

	w->ev_len = 0;
	while (cons < prod) {
		const uint8_t *rec = r->data + (cons & r->mask);
		uint32_t hdr = __atomic_load_n((const uint32_t *)rec, __ATOMIC_ACQUIRE);
		uint32_t len = hdr & ~(RB_BUSY | RB_DISCARD);

		if (hdr & RB_BUSY)
			break;
		if (!(hdr & RB_DISCARD)) {
			if (w->ev_len + 4 + len > EV_CAP)
				break; /* the rest go with the next return (`ev` is never too small for one record) */
			memcpy(w->ev_buf + w->ev_len, &len, 4);
			memcpy(w->ev_buf + w->ev_len + 4, rec + RB_HDR, len);
			w->ev_len += 4 + len;
		}
		cons += (len + RB_HDR + 7) & ~7ull;
		__atomic_store_n(r->cons, cons, __ATOMIC_RELEASE);
		if (cons >= prod)
			prod = __atomic_load_n(r->prod, __ATOMIC_ACQUIRE);
	}
	if (w->batch) /* what is left in the ring, for the program's count of waiting records (sg_replay_record) */
		w->batch->waiting = (uint32_t)ring_held(r);
	return w->ev_len;
}

/* Run packets until a run leaves a record that may decide, or the records waiting fill half of `ev` (SGW_EVENTS: they
 * are in `ev`), the capture ends (SGW_END; waiting records are handed over first), about `max_packets` have run in
 * this call (SGW_PAUSE), a record is bad (SGW_ECAPTURE: err, err_off) or a test run fails (SGW_ERUN: err_no; the
 * records waiting from earlier packets are handed over first, as at the end).
 * Packets before a bad record all run first, as in the per-packet loop. */
int sgw_run(struct sgw *w, uint64_t max_packets)
{
	uint64_t done = 0;

	if (!w->started && start(w))
		return SGW_ECAPTURE;
	if (take_records(w)) /* records left over from the last return (more than `ev` held), or put there before */
		return SGW_EVENTS;
	for (;;) {
		uint32_t want = w->batch ? SG_BATCH_MAX : 1;

		while (!w->pending && w->nstage < want && w->stage_used < SG_BATCH_BYTES) {
			int rc = stage_one(w);

			if (rc != 1)
				w->pending = rc;
		}
		if (!w->nstage)
			return take_records(w) ? SGW_EVENTS : w->pending; /* the last packets' records first */
		int64_t ran = run_staged(w, batch_size(w));

		if (ran < 0) {
			/* records waiting from the packets that ran go to Python first, the error after, as at a capture's
			 * end; the packets staged behind the failed run never run */
			w->pending = (int)ran;
			w->nstage = 0;
			w->stage_used = 0;
			return take_records(w) ? SGW_EVENTS : (int)ran;
		}
		/* records that may have the slow path write go to Python now; records that cannot (early samples, weak
		 * `classified` records) may wait for more batches, as long as one return's `ev` holds them all */
		uint64_t waiting = ring_held(w->ring);

		if (waiting && (w->stopped || waiting > EV_CAP / 2) && take_records(w))
			return SGW_EVENTS;
		done += ran;
		if (done >= max_packets)
			return SGW_PAUSE;
	}
}
