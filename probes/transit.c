/* transit.c - node transit time: a packet's arrival on a node to its departure.
 *
 * Measures: for each skb received on a node's inbound hop and then
 *   transmitted on a node's outbound hop, net_dev_start_xmit - netif_receive_skb
 *   (bpf_ktime_get_ns), as a log-linear histogram (16 sub-buckets per power of
 *   two, <= 6.25 % bucket width) and counts per (inbound, outbound) hop pair.
 *   This is the node's forwarding path: routing, netfilter or the eBPF
 *   datapath, qdisc, up to the driver.
 * Attaches: tracepoints net:netif_receive_skb and net:net_dev_start_xmit
 *   (all CPUs, all namespaces). Hops are recognised by device name (a
 *   __data_loc string in the tracepoint): inbound "pc" (from the client pod)
 *   or "ul0" (from the underlay), outbound "p<digits>" (to a pod) or "ul0";
 *   these names exist only in kpbench node namespaces. With KPB_TAGGED only
 *   the run's own packets count: kpb_tag at tc egress of the client's eth0
 *   remembers every IPv4 skb the client sends (the tc context is the kernel's
 *   skb, the address the tracepoints report; veth hands that skb on through
 *   every hop), and skb:kfree_skb / skb:consume_skb forget it when it ends,
 *   so a reused address is not mistaken for the run's; with the datapath's
 *   process cgroup also kpb_delivered_cg at its cgroup_skb ingress (a skb a
 *   userspace proxy reads ends without a tracepoint). Tagged skbs live in a
 *   direct-mapped table (`tags`: a slot per hash of the address,
 *   holding the whole address): a look-up is one array load and compare, no
 *   hash map's hashing, locks or LRU lists on the per-packet path.
 * Overhead: both net tracepoints fire for every packet on every device; each
 *   hit reads up to 8 bytes of device name; node hops add a hash lookup and
 *   update. Tagged: a hit first looks the skb up in the table (an skb that is
 *   not the run's, or not timed, leaves there, before the name or the clock is
 *   read); one slot store per sent packet, one slot load per freed or consumed
 *   skb machine-wide. KPB_SAMPLE_EVERY > 1 tags only every that-many-th IPv4
 *   skb sent (a run's breakdown repetition: 8). With the table (docs/probes.md,
 *   "The breakdown set", 2026-12-02): a timed packet about 400 ns of programs.
 *   Measured with hash maps before the table (docs/probes.md,
 *   2026-11-29, 2-vCPU Firecracker VM, kernel 6.18): the most expensive
 *   probe, top-speed throughput -23 to -28 %, about +1.3-1.7 us per packet
 *   (four tracepoint hits on a pod -> node -> pod path), and that time is
 *   inside latency samples and NET_RX time taken while it is attached:
 *   measure latency and CPU per packet without it.
 * Limits: the tracepoints carry no namespace. Untagged, every kpbench node on
 *   the machine (other runs too) is merged, and an skb freed inside a node
 *   leaves an entry whose reused address could pair with a packet the node
 *   sends itself: matches older than KPB_MAX_NS count as stale, not samples.
 *   A packet whose skb is copied inside the node is not matched. Tagged: two
 *   of the run's skbs in flight at once whose addresses share a slot keep only
 *   the later one's tag (the earlier is not matched: a sample less, never a
 *   wrong one); with 2^18 slots and the few hundred skbs a run has in flight
 *   at most, that is rare.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#ifndef KPB_MAX_NS
#define KPB_MAX_NS 1000000000ULL
#endif
#ifndef KPB_TAGGED
#define KPB_TAGGED 0
#endif
#ifndef KPB_SAMPLE_EVERY
#define KPB_SAMPLE_EVERY 1 /* tagged: time 1 in this many of the IPv4 skbs sent */
#endif
#define KPB_SUB_BITS 4
/* Exponents up to 61: every bound fits a signed 64-bit ns; larger values
 * (impossible below KPB_MAX_NS) go to the last bucket. */
#define KPB_BUCKETS ((62 - KPB_SUB_BITS + 1) << KPB_SUB_BITS)
#define KPB_ETH_P_IP 0x0800

enum { HOP_PC, HOP_UL0, HOP_POD, HOP_N };
enum { T_STALE = 4, T_RX, T_N }; /* 0..3: pair (in - HOP_PC) * 2 + (out == HOP_UL0) */

#if KPB_TAGGED
/* The run's skbs: ts 0 while not inside a node (between hops); hop HOP_N once
 * a node sent it to a pod (it enters no node again: the pod's own hops need
 * no name read). */
struct kpb_slot {
    u64 skb;
    u64 ts;
    u32 hop;
    u32 pad;
};
/* The run's skbs in a direct-mapped table: a slot per (Fibonacci) hash of the
 * address, holding the whole address, so a look-up is one array load and one
 * compare (drops.c and transit.c hold the same few lines: BCC rewrites map
 * calls in a probe's own file only, not in a header it includes). */
#ifndef KPB_TAG_BITS
#define KPB_TAG_BITS 18
#endif

BPF_ARRAY(tags, struct kpb_slot, 1 << KPB_TAG_BITS);

static __always_inline struct kpb_slot *kpb_slot(u64 skb)
{
    u32 i = (u32)((skb * 0x9E3779B97F4A7C15ULL) >> (64 - KPB_TAG_BITS));
    return tags.lookup(&i);
}

/* The skb's life ended: forget it, if its slot holds it. */
static __always_inline void kpb_forget(u64 skb)
{
    struct kpb_slot *s = kpb_slot(skb);
    if (s && s->skb == skb)
        s->skb = 0;
}

/* The kernel's address of a tc or cgroup_skb program's skb (its context pointer)
 * as a number: the verifier allows no arithmetic on a context pointer, but root
 * may store one in a map value, and what a program reads from a map is a number. */
BPF_PERCPU_ARRAY(addr_of, u64, 1);

static __always_inline u64 kpb_skb_addr(struct __sk_buff *skb)
{
    u32 zero = 0;
    u64 *slot = addr_of.lookup(&zero);
    if (!slot)
        return 0;
    *slot = (u64)(unsigned long)skb;
    return *(volatile u64 *)slot;
}
#else
struct kpb_inflight {
    u64 ts;
    u32 hop;
};

/* Per-CPU LRU lists: no lock shared across CPUs on the per-packet path. */
BPF_F_TABLE("lru_hash", u64, struct kpb_inflight, inflight, 262144, BPF_F_NO_COMMON_LRU);
#endif
BPF_PERCPU_ARRAY(hist, u64, KPB_BUCKETS);
BPF_PERCPU_ARRAY(counts, u64, T_N);

static __always_inline int kpb_hop(const char *n)
{
    if (n[0] == 'p' && n[1] == 'c' && n[2] == 0)
        return HOP_PC;
    if (n[0] == 'u' && n[1] == 'l' && n[2] == '0' && n[3] == 0)
        return HOP_UL0;
    if (n[0] == 'p' && n[1] >= '0' && n[1] <= '9')
        return HOP_POD;
    return -1;
}

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

TRACEPOINT_PROBE(net, netif_receive_skb)
{
    u64 key = (u64)args->skbaddr;
#if KPB_TAGGED
    struct kpb_slot *in = kpb_slot(key);
    if (!in || in->skb != key || in->hop == HOP_N)
        return 0; /* not the run's, or at its pod */
#endif
    char name[8] = {};
    TP_DATA_LOC_READ_CONST(name, name, sizeof(name));
    int hop = kpb_hop(name);
    if (hop != HOP_PC && hop != HOP_UL0)
        return 0;
#if KPB_TAGGED
    in->ts = bpf_ktime_get_ns();
    in->hop = hop;
#else
    struct kpb_inflight in = {.ts = bpf_ktime_get_ns(), .hop = hop};
    inflight.update(&key, &in);
#endif
    kpb_count(T_RX);
    return 0;
}

TRACEPOINT_PROBE(net, net_dev_start_xmit)
{
    u64 key = (u64)args->skbaddr;
#if KPB_TAGGED
    struct kpb_slot *in = kpb_slot(key);
    if (!in || in->skb != key || !in->ts)
        return 0; /* not the run's, or not inside a node: no clock read */
    u64 now = bpf_ktime_get_ns();
#else
    u64 now = bpf_ktime_get_ns();
    struct kpb_inflight *in = inflight.lookup(&key);
    if (!in || !in->ts)
        return 0;
#endif
    char name[8] = {};
    TP_DATA_LOC_READ_CONST(name, name, sizeof(name));
    int hop = kpb_hop(name);
    if (hop != HOP_POD && hop != HOP_UL0)
        return 0;
    u64 delta = now - in->ts;
    u32 pair = (in->hop - HOP_PC) * 2 + (hop == HOP_UL0);
#if KPB_TAGGED
    in->ts = 0; /* stays tagged: it may enter another node, unless a pod */
    if (hop == HOP_POD)
        in->hop = HOP_N;
#else
    inflight.delete(&key);
#endif
    if (delta > KPB_MAX_NS) {
        kpb_count(T_STALE);
        return 0;
    }
    kpb_count(pair);
    u32 b = kpb_bucket(delta);
    if (b >= KPB_BUCKETS)
        b = KPB_BUCKETS - 1;
    u64 *h = hist.lookup(&b);
    if (h)
        (*h)++;
    return 0;
}

#if KPB_TAGGED
/* IPv4 skbs sent, per CPU: with KPB_SAMPLE_EVERY > 1 only every that-many-th is
 * tagged, and the others leave every hit above at the table's first compare. */
BPF_PERCPU_ARRAY(sent, u32, 1);

static __always_inline int kpb_sampled(void)
{
    if (KPB_SAMPLE_EVERY <= 1)
        return 1;
    u32 zero = 0;
    u32 *n = sent.lookup(&zero);
    if (!n)
        return 0;
    return (*n)++ % KPB_SAMPLE_EVERY == 0;
}

int kpb_tag(struct __sk_buff *skb)
{
    u16 eth_type;
    /* The frame's own EtherType: skb->protocol of an AF_PACKET-injected frame
     * depends on how the sender opened its socket. */
    if (bpf_skb_load_bytes(skb, 12, &eth_type, 2) == 0 && eth_type == htons(KPB_ETH_P_IP)
        && kpb_sampled()) {
        /* The context pointer is the kernel's struct sk_buff. */
        u64 addr = kpb_skb_addr(skb);
        struct kpb_slot *s = kpb_slot(addr);
        if (s) {
            s->ts = 0;
            s->hop = HOP_PC;
            s->skb = addr;
        }
    }
    return TC_ACT_UNSPEC; /* let the filters behind this one run */
}

/* skb:kfree_skb and skb:consume_skb: the skb's life ends, forget its address.
 * Field offsets come from the format files (KPB_OFF_*), not kernel headers. */
int kpb_kfree_skb(void *ctx)
{
    kpb_forget(*(u64 *)((char *)ctx + KPB_OFF_KFREE_SKBADDR));
    return 0;
}

int kpb_consume_skb(void *ctx)
{
    kpb_forget(*(u64 *)((char *)ctx + KPB_OFF_CONSUME_SKBADDR));
    return 0;
}

/* At the sockets of the datapath's own processes (a userspace proxy: cgroup_skb
 * ingress of their cgroup): the client's skb ends in the proxy's socket, and
 * UDP frees a datagram it has read without any tracepoint, so its address must
 * be forgotten here; else the proxy's own send, whose new skb may reuse that
 * address, would be timed as a transit of the client's packet. */
int kpb_delivered_cg(struct __sk_buff *skb)
{
    kpb_forget(kpb_skb_addr(skb));
    return 1; /* allow */
}
#endif
