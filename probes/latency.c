/* latency.c - per-packet one-way latency: client egress -> backend pod ingress.
 *
 * Measures: for every packet carrying the harness's identity (transport
 *   payload = "KPB1" + u32 big-endian sequence number), bpf_ktime_get_ns() as
 *   it leaves the client and as it reaches a backend pod, and the IPv4
 *   destination it reached the pod with (which pod, so which node's path). Both stamps are
 *   taken on the same host clock (CLOCK_MONOTONIC), so arrival - departure is
 *   the one-way latency through the node(s) and the datapath under test.
 * Attaches: tc clsact egress of the client's eth0 (kpb_depart) and tc clsact
 *   ingress of every backend pod's eth0 (kpb_arrive), cls_bpf direct-action.
 *   kpb_arrive drops (TC_ACT_SHOT) identified packets when KPB_DROP is 1, so
 *   no userspace responder, ICMP error or reply perturbs the measurement.
 * Reads: only the packet (bpf_skb_load_bytes) - __sk_buff is UAPI, so no
 *   kernel struct layout is assumed; IPv4 with options (ihl), UDP, TCP
 *   with options (doff).
 * Overhead: per packet and hook, a few bpf_skb_load_bytes, one array store,
 *   one per-CPU counter. Measured (docs/probes.md, 2026-11-29, 2-vCPU
 *   Firecracker VM, kernel 6.18): top-speed throughput -12 to -15 %, about
 *   +0.6-0.8 us of sender CPU per packet. The arrival program runs inside
 *   NET_RX, so the cpu probe counts it; the time after the departure stamp
 *   (this program's own parse) is inside every latency sample (tens of ns).
 *   With drop=1 the backend's stack is skipped, so throughput rises.
 * Sink mode (config[1]): kpb_depart returns at once and kpb_arrive only counts and
 *   drops IPv4 frames - for the passes whose CPU figure must not carry this probe's
 *   work.
 * Limits: sequence numbers index arrays of KPB_CAPACITY slots from a base
 *   set in config[0]; others count as out_of_range. A sequence number seen
 *   twice keeps the last stamp and counts a duplicate. IPv4 only; non-first
 *   fragments are ignored. A stamp of 0 means "not seen".
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "kpb_identity.h"

#ifndef KPB_CAPACITY
#define KPB_CAPACITY 1048576
#endif
#ifndef KPB_DROP
#define KPB_DROP 1
#endif

enum { C_SENT, C_DELIVERED, C_OUT_OF_RANGE, C_DUPLICATE, C_COPIED, C_SUNK, C_N };

/* Mmappable so userspace reads a million stamps in one copy, not a million syscalls. */
BPF_F_TABLE("array", u32, u64, depart_ns, KPB_CAPACITY, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, u64, arrive_ns, KPB_CAPACITY, BPF_F_MMAPABLE);
/* The IPv4 destination each identified packet arrived with (network order): which
 * backend pod, so which node's path, it took. Written after the arrival stamp. */
BPF_F_TABLE("array", u32, u32, arrive_dst, KPB_CAPACITY, BPF_F_MMAPABLE);
BPF_PERCPU_ARRAY(counts, u64, C_N);
/* [0] = sequence number stored at slot 0; [1] = 1: sink mode (see kpb_arrive). */
BPF_ARRAY(config, u32, 2);

static __always_inline int kpb_sinking(void)
{
    u32 one = 1;
    u32 *sink = config.lookup(&one);
    return sink && *sink;
}

static __always_inline void kpb_count(u32 which)
{
    u64 *c = counts.lookup(&which);
    if (c)
        (*c)++;
}

/* The slot of an identified packet, -1 if it is none, -2 if out of range
 * (kpb_identity.h: the linear data read in place, a paged skb copied). */
static __always_inline int kpb_slot(struct __sk_buff *skb)
{
    u32 seq;
    int how = kpb_identity(skb, &seq);
    if (how == KPB_ID_NONE)
        return -1;
    if (how == KPB_ID_COPIED)
        kpb_count(C_COPIED);
    u32 zero = 0;
    u32 *base = config.lookup(&zero);
    u32 slot = seq - (base ? *base : 0);
    return slot < KPB_CAPACITY ? (int)slot : -2;
}

/* The stamped slot (>= 0), -1 for an unidentified packet, -2 for one out of range. */
static __always_inline int kpb_stamp(struct __sk_buff *skb, int is_arrival)
{
    int slot = kpb_slot(skb);
    if (slot == -1)
        return -1;
    /* Stamped after the parse at both ends: neither parse is inside a sample. */
    u64 now = bpf_ktime_get_ns();
    kpb_count(is_arrival ? C_DELIVERED : C_SENT);
    if (slot < 0) {
        kpb_count(C_OUT_OF_RANGE);
        return -2;
    }
    u32 key = slot;
    u64 *ts = is_arrival ? arrive_ns.lookup(&key) : depart_ns.lookup(&key);
    if (ts) {
        if (*ts)
            kpb_count(C_DUPLICATE);
        *ts = now;
    }
    return slot;
}

/* The IPv4 destination address of an identified packet (network order; 0 if unread). */
static __always_inline u32 kpb_daddr(struct __sk_buff *skb)
{
    u8 *p = (u8 *)(long)skb->data;
    u8 *end = (u8 *)(long)skb->data_end;
    u32 daddr = 0;
    if (p + ETH_HLEN + 20 <= end)
        return *(u32 *)(p + ETH_HLEN + 16);
    bpf_skb_load_bytes(skb, ETH_HLEN + 16, &daddr, 4);
    return daddr;
}

/* TC_ACT_UNSPEC, not TC_ACT_OK: OK would end classification and skip any
 * filter behind this one (another probe's, or a datapath's) on the same hook. */
int kpb_depart(struct __sk_buff *skb)
{
    if (kpb_sinking())
        return TC_ACT_UNSPEC;
    kpb_stamp(skb, 0);
    return TC_ACT_UNSPEC;
}

/* Sink mode (config[1] = 1, the cpu passes of bench.measure.runner): no parse, no
 * stamp - every IPv4 frame is counted (C_SUNK: what the pass delivered) and dropped as
 * it reaches the backend (ARP still passes), so the backends' stacks do what they do
 * when identified packets are dropped, and this program adds to the NET_RX figure
 * only two lookups, a compare and an increment. */
int kpb_arrive(struct __sk_buff *skb)
{
    if (kpb_sinking()) {
        if (skb->protocol != htons(ETH_P_IP))
            return TC_ACT_UNSPEC;
        kpb_count(C_SUNK);
        return KPB_DROP ? TC_ACT_SHOT : TC_ACT_UNSPEC;
    }
    int slot = kpb_stamp(skb, 1);
    if (slot == -1)
        return TC_ACT_UNSPEC;
    if (slot >= 0) {
        u32 key = slot;
        u32 *dst = arrive_dst.lookup(&key);
        if (dst)
            *dst = kpb_daddr(skb);
    }
    return KPB_DROP ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}
