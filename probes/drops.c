/* drops.c - packets the kernel dropped, by drop reason.
 *
 * Measures: skb:kfree_skb events per `reason` (enum skb_drop_reason): for
 *   every protocol and for IPv4 machine-wide, and - when an origin hook is
 *   given (KPB_TAGGED) - for the run's own packets only. The loader names
 *   reasons from the kernel's own tracepoint format (its __print_symbolic
 *   list), never from a table here.
 * Attaches: tracepoint skb:kfree_skb (all CPUs, all namespaces) as a plain
 *   tracepoint program whose field offsets come from the format file
 *   (KPB_OFF_*), because the field's type, enum skb_drop_reason, is not in
 *   headers that may not match the running kernel. With KPB_TAGGED also:
 *   kpb_tag at tc egress of the client's eth0, which remembers the address of
 *   every IPv4 skb the client sends (the tc context is the kernel's skb, the
 *   same address the tracepoints report, and veth hands that skb on through
 *   every hop), and skb:consume_skb, which forgets a tagged skb that ended
 *   normally so its address, once reused, is not mistaken for the run's.
 *   With backend hooks also kpb_delivered at tc ingress of every backend
 *   pod's eth0, first in line there, which forgets the skb as it arrives: a
 *   run's drop is a drop between the client and the backend, the datapath's,
 *   never the harness's own (the latency probe drops identified packets at
 *   that same hook) nor the pod stack's. So drops of the run <= sent -
 *   arrived at a backend. With the datapath's process cgroup also
 *   kpb_delivered_cg at its cgroup_skb ingress (skbs its processes receive).
 * Overhead: one per-CPU hash increment per dropped skb machine-wide (two for
 *   IPv4); tagged: one hash update per sent packet, one lock-free hash lookup
 *   per freed or consumed skb machine-wide and a delete for the run's own, one
 *   lookup and delete per delivered packet. Measured (docs/probes.md, 2026-11-29, 2-vCPU Firecracker VM,
 *   kernel 6.18) on a workload where every packet is
 *   dropped: top-speed throughput -5 to -10 % (about +0.2-0.5 us per packet),
 *   tagged -18 to -21 % (about +1.0-1.2 us per packet).
 * Limits: the machine-wide counts include other traffic and other runs. The
 *   run's count misses packets whose skb is copied on the way (e.g. an XDP
 *   program that redirects builds a new skb). Kernels before 5.17 have no
 *   `reason` field; the loader then reports the probe missing.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#ifndef KPB_OFF_REASON
#error "KPB_OFF_REASON, KPB_OFF_PROTOCOL, KPB_OFF_KFREE_SKBADDR must be defined by the loader"
#endif
#ifndef KPB_TAGGED
#define KPB_TAGGED 0
#endif
#define KPB_ETH_P_IP 0x0800

/* (kind << 32 | reason) -> count, per CPU (the loader sums the CPUs): a plain
 * add, no atomic on a line that both CPUs write for every dropped packet. */
enum { K_ALL, K_IP, K_RUN }; /* every protocol, IPv4, the run's tagged skbs */
BPF_PERCPU_HASH(drops, u64, u64, 3 * 4096);
/* Per-CPU LRU lists: no lock shared across CPUs on the per-packet path. */
BPF_F_TABLE("lru_hash", u64, u8, tagged, 262144, BPF_F_NO_COMMON_LRU);

/* count[kind, reason]++ on this CPU's slot. insert() is BPF_NOEXIST: if another
 * CPU's first drop of this reason made the entry meanwhile, look again. */
static __always_inline void kpb_add(u64 kind, u32 reason)
{
    u64 key = kind << 32 | reason;
    u64 *c = drops.lookup(&key);
    if (!c) {
        u64 one = 1;
        if (drops.insert(&key, &one) == 0)
            return;
        c = drops.lookup(&key);
    }
    if (c)
        (*c)++;
}

/* A hash delete takes its bucket's lock even when the key is absent, and these
 * run for every freed or consumed skb on the machine: look first (lock-free). */
static __always_inline void kpb_forget(u64 skb)
{
    if (tagged.lookup(&skb))
        tagged.delete(&skb);
}

int kpb_kfree_skb(void *ctx)
{
    u32 reason = *(u32 *)((char *)ctx + KPB_OFF_REASON);
    u16 protocol = *(u16 *)((char *)ctx + KPB_OFF_PROTOCOL);
    kpb_add(K_ALL, reason);
    if (protocol == KPB_ETH_P_IP)
        kpb_add(K_IP, reason);
#if KPB_TAGGED
    u64 skb = *(u64 *)((char *)ctx + KPB_OFF_KFREE_SKBADDR);
    if (tagged.lookup(&skb)) {
        kpb_add(K_RUN, reason);
        tagged.delete(&skb);
    }
#endif
    return 0;
}

#if KPB_TAGGED
int kpb_consume_skb(void *ctx)
{
    kpb_forget(*(u64 *)((char *)ctx + KPB_OFF_CONSUME_SKBADDR));
    return 0;
}

int kpb_tag(struct __sk_buff *skb)
{
    u16 eth_type;
    /* The frame's own EtherType: skb->protocol of an AF_PACKET-injected frame
     * depends on how the sender opened its socket. */
    if (bpf_skb_load_bytes(skb, 12, &eth_type, 2) == 0 && eth_type == htons(KPB_ETH_P_IP)) {
        /* The context pointer is the kernel's struct sk_buff (root may read it). */
        u64 addr = (u64)(unsigned long)skb;
        u8 one = 1;
        tagged.update(&addr, &one);
    }
    return TC_ACT_UNSPEC; /* let the filters behind this one run */
}

/* At a backend pod's ingress, ahead of every other filter there: the packet
 * has crossed the datapath, so whatever happens to it next (the latency
 * probe's own TC_ACT_SHOT, the pod's stack finding no socket) is not the
 * datapath's drop. Forget it. */
int kpb_delivered(struct __sk_buff *skb)
{
    kpb_forget((u64)(unsigned long)skb);
    return TC_ACT_UNSPEC;
}

/* The same at the sockets of the datapath's own processes (a userspace proxy,
 * cgroup_skb ingress of their cgroup): a packet the proxy receives has crossed
 * the part of the datapath that the client's skb takes, and its skb may end
 * without any tracepoint (UDP frees a read datagram that way), so its address
 * must be forgotten here or a later skb at that address would count. */
int kpb_delivered_cg(struct __sk_buff *skb)
{
    kpb_forget((u64)(unsigned long)skb);
    return 1; /* allow */
}
#endif
