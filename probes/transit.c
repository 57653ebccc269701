/* transit.c - node transit time: a packet's arrival on a node to its departure.
 *
 * Measures: for each identified packet (payload "KPB1" + u32 sequence, as
 *   bench.measure.traffic builds them) that enters a node on an inbound hop and
 *   leaves it on an outbound hop, the time between the two (bpf_ktime_get_ns), as
 *   a log-linear histogram (16 sub-buckets per power of two, <= 6.25 % bucket
 *   width) and counts per (inbound, outbound) hop pair. This is the node's
 *   forwarding path from its tc ingress hook to its tc egress hook: routing,
 *   netfilter or the eBPF datapath (a userspace proxy: its receive, its own time
 *   and its send, as the proxy forwards the payload as it came).
 * Attaches: tc programs in every node namespace of the run: kpb_in_pc and
 *   kpb_in_ul0 at ingress of the inbound hops ("pc", from the client pod; "ul0",
 *   from the underlay), ahead of a datapath's own tc programs there; kpb_out_pod
 *   and kpb_out_ul0 at egress of the outbound hops ("p<n>", to a pod; "ul0").
 *   Nothing outside the run's node namespaces runs them.
 * Keying: by the packet's sequence number, which every hop carries unchanged
 *   (the node translates headers, never the payload): a direct-mapped array of
 *   stamps, a slot per sequence number modulo its size, holding the number; an
 *   arrival stamps it, the departure with the same number times and clears it. A
 *   packet entering a second node (over the underlay) is stamped there again.
 * Sampling: KPB_SAMPLE_EVERY > 1 times only the packets whose sequence number is
 *   a multiple of it (a run's breakdown repetition: 8); the others leave after
 *   the parse, before the clock or the array.
 * Overhead: per packet and node hop one program run (a few loads of the
 *   packet's linear data; for a timed packet a clock read and an array slot).
 *   Measured (docs/probes.md, "Transit at the nodes' own hooks"): 2 runs a
 *   packet on a one-node path, 4 on a path over the underlay, 20-30 ns each;
 *   the net tracepoints this probe used before hit every device of the machine
 *   (about 6.5 hits a packet, plus two free-path programs). The runs are inside
 *   the node's NET_RX figure: measure latency and CPU per packet without it.
 * Limits: IPv4, UDP or TCP, identified packets only; non-first fragments are
 *   not timed. Two timed packets in the same node at once whose numbers share a
 *   slot (2^KPB_SLOT_BITS apart) keep only the later one's stamp: a sample less,
 *   never a wrong one. A stamp older than KPB_MAX_NS (a packet dropped inside a
 *   node, its slot met again by a later departure of the same number) counts as
 *   stale, not as a sample. A packet an XDP program redirects or sends back
 *   (XDP_TX) passes no tc hook of that node and is not timed there; the next
 *   node, where the stack forwards it, times its own part.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "kpb_identity.h"

#ifndef KPB_MAX_NS
#define KPB_MAX_NS 1000000000ULL
#endif
#ifndef KPB_SAMPLE_EVERY
#define KPB_SAMPLE_EVERY 1 /* time the packets whose sequence number is a multiple of it */
#endif
#ifndef KPB_SLOT_BITS
#define KPB_SLOT_BITS 12
#endif
#define KPB_SUB_BITS 4
/* Exponents up to 61: every bound fits a signed 64-bit ns; larger values
 * (impossible below KPB_MAX_NS) go to the last bucket. */
#define KPB_BUCKETS ((62 - KPB_SUB_BITS + 1) << KPB_SUB_BITS)

enum { HOP_PC, HOP_UL0, HOP_POD };
enum { T_STALE = 4, T_RX, T_N }; /* 0..3: pair (in - HOP_PC) * 2 + (out == HOP_UL0) */

struct kpb_stamp {
    u64 ts;  /* 0: no packet inside a node holds this slot */
    u32 seq;
    u32 hop; /* the inbound hop */
};

BPF_ARRAY(stamps, struct kpb_stamp, 1 << KPB_SLOT_BITS);
BPF_PERCPU_ARRAY(hist, u64, KPB_BUCKETS);
BPF_PERCPU_ARRAY(counts, u64, T_N);

static __always_inline void kpb_count(u32 which)
{
    u64 *c = counts.lookup(&which);
    if (c)
        (*c)++;
}

/* Log-linear bucket: the exponent (position of the top bit) and the next
 * KPB_SUB_BITS bits. Values below 2^KPB_SUB_BITS are exact. */
static __always_inline u32 kpb_bucket(u64 v)
{
    u32 msb = 0;
    u64 x = v;
    if (x >> 32) { msb += 32; x >>= 32; }
    if (x >> 16) { msb += 16; x >>= 16; }
    if (x >> 8) { msb += 8; x >>= 8; }
    if (x >> 4) { msb += 4; x >>= 4; }
    if (x >> 2) { msb += 2; x >>= 2; }
    if (x >> 1) { msb += 1; }
    if (msb < KPB_SUB_BITS)
        return (u32)v;
    u32 sub = (v >> (msb - KPB_SUB_BITS)) & ((1 << KPB_SUB_BITS) - 1);
    return ((msb - KPB_SUB_BITS + 1) << KPB_SUB_BITS) + sub;
}

/* The slot of a packet this probe times, or NULL (not identified, not sampled). */
static __always_inline struct kpb_stamp *kpb_timed(struct __sk_buff *skb, u32 *seq)
{
    if (kpb_identity(skb, seq) == KPB_ID_NONE)
        return NULL;
    if (KPB_SAMPLE_EVERY > 1 && *seq % KPB_SAMPLE_EVERY)
        return NULL;
    u32 i = *seq & ((1 << KPB_SLOT_BITS) - 1);
    return stamps.lookup(&i);
}

static __always_inline int kpb_in(struct __sk_buff *skb, u32 hop)
{
    u32 seq;
    struct kpb_stamp *s = kpb_timed(skb, &seq);
    if (!s)
        return TC_ACT_UNSPEC;
    s->seq = seq;
    s->hop = hop;
    s->ts = bpf_ktime_get_ns(); /* after the parse: it is not inside the sample */
    kpb_count(T_RX);
    return TC_ACT_UNSPEC;
}

static __always_inline int kpb_out(struct __sk_buff *skb, u32 hop)
{
    u32 seq;
    struct kpb_stamp *s = kpb_timed(skb, &seq);
    if (!s || s->seq != seq || !s->ts)
        return TC_ACT_UNSPEC;
    u64 delta = bpf_ktime_get_ns() - s->ts;
    u32 pair = (s->hop - HOP_PC) * 2 + (hop == HOP_UL0);
    s->ts = 0;
    if (delta > KPB_MAX_NS) {
        kpb_count(T_STALE);
        return TC_ACT_UNSPEC;
    }
    kpb_count(pair);
    u32 b = kpb_bucket(delta);
    if (b >= KPB_BUCKETS)
        b = KPB_BUCKETS - 1;
    u64 *h = hist.lookup(&b);
    if (h)
        (*h)++;
    return TC_ACT_UNSPEC;
}

/* TC_ACT_UNSPEC, not TC_ACT_OK: OK would end classification and skip the filters
 * behind these (a datapath's) on the same hook. */
int kpb_in_pc(struct __sk_buff *skb) { return kpb_in(skb, HOP_PC); }
int kpb_in_ul0(struct __sk_buff *skb) { return kpb_in(skb, HOP_UL0); }
int kpb_out_pod(struct __sk_buff *skb) { return kpb_out(skb, HOP_POD); }
int kpb_out_ul0(struct __sk_buff *skb) { return kpb_out(skb, HOP_UL0); }
