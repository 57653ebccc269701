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
 *   arrived at a backend. With KPB_SINK kpb_delivered also counts every IPv4
 *   frame that reaches a backend and drops it there (the latency probe's sink
 *   mode, for the breakdown repetition: one program at that hook, not two).
 *   With KPB_MACHINE 0 (tagged only) the machine-wide counts are left out: the
 *   skb's-end program then only looks the skb up (the breakdown repetition,
 *   which stores the run's drops alone; 4.3-4.6 ns a run instead of 15-16).
 *   With the datapath's process cgroup also
 *   kpb_delivered_cg at its cgroup_skb ingress (skbs its processes receive).
 *   The run's skbs live in a direct-mapped table (`tags`): a slot per
 *   hash of the address, holding the whole address; two in flight at once
 *   that share a slot keep only the later one's tag (a drop of the earlier is
 *   then not the run's: an undercount, never a drop of another skb).
 * Overhead: one per-CPU hash increment per dropped skb machine-wide (two for
 *   IPv4); tagged: one slot store per sent packet, one slot load and compare
 *   per freed, consumed or delivered skb and a store for the run's own.
 *   With the table and the array (docs/probes.md, "The breakdown set",
 *   2026-12-02): its programs inside the CPU figure about 100-160 ns a packet.
 *   KPB_SINK adds one per-CPU increment per frame at a backend and saves the
 *   latency probe's two programs a packet (docs/probes.md, "The breakdown set
 *   without the latency probe").
 *   Measured with hash maps before the table (docs/probes.md, 2026-11-29, 2-vCPU Firecracker VM,
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
#ifndef KPB_SINK
#define KPB_SINK 0 /* kpb_delivered counts and drops what reaches a backend */
#endif
#ifndef KPB_MACHINE
#define KPB_MACHINE 1 /* count every skb drop of the machine too, not only the run's */
#endif
#if !KPB_MACHINE && !KPB_TAGGED
#error "KPB_MACHINE=0 needs KPB_TAGGED: the probe would count nothing"
#endif
#define KPB_ETH_P_IP 0x0800

/* Counts per CPU (the loader sums the CPUs): a plain add, no atomic on a line
 * that both CPUs write for every dropped packet. The core reasons (below
 * KPB_CORE_REASONS: enum skb_drop_reason has about 130) in an array at
 * kind * KPB_CORE_REASONS + reason, one inlined load a drop; a subsystem's
 * (its id in the high 16 bits) in a hash keyed kind << 32 | reason. */
enum { K_ALL, K_IP, K_RUN }; /* every protocol, IPv4, the run's tagged skbs */
#define KPB_CORE_REASONS 512
BPF_PERCPU_ARRAY(core_drops, u64, 3 * KPB_CORE_REASONS);
BPF_PERCPU_HASH(drops, u64, u64, 3 * 4096);
#if KPB_TAGGED
struct kpb_slot {
    u64 skb; /* a run's skb not yet delivered nor ended; 0: none */
};
/* The run's skbs in a direct-mapped table: a slot per (Fibonacci) hash of the
 * address, holding the whole address, so a look-up is one array load and one
 * compare. */
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
#endif

/* count[kind, reason]++ on this CPU's slot. insert() is BPF_NOEXIST: if another
 * CPU's first drop of this reason made the entry meanwhile, look again. */
static __always_inline void kpb_add(u64 kind, u32 reason)
{
    if (reason < KPB_CORE_REASONS) {
        u32 i = (u32)kind * KPB_CORE_REASONS + reason;
        u64 *n = core_drops.lookup(&i);
        if (n)
            (*n)++;
        return;
    }
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

int kpb_kfree_skb(void *ctx)
{
    u32 reason = *(u32 *)((char *)ctx + KPB_OFF_REASON);
#if KPB_MACHINE
    u16 protocol = *(u16 *)((char *)ctx + KPB_OFF_PROTOCOL);
    kpb_add(K_ALL, reason);
    if (protocol == KPB_ETH_P_IP)
        kpb_add(K_IP, reason);
#endif
#if KPB_TAGGED
    u64 skb = *(u64 *)((char *)ctx + KPB_OFF_KFREE_SKBADDR);
    struct kpb_slot *s = kpb_slot(skb);
    if (s && s->skb == skb) {
        s->skb = 0;
        kpb_add(K_RUN, reason);
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
        /* The context pointer is the kernel's struct sk_buff. */
        u64 addr = kpb_skb_addr(skb);
        struct kpb_slot *s = kpb_slot(addr);
        if (s)
            s->skb = addr;
    }
    return TC_ACT_UNSPEC; /* let the filters behind this one run */
}

/* At a backend pod's ingress, ahead of every other filter there: the packet
 * has crossed the datapath, so whatever happens to it next (the latency
 * probe's own TC_ACT_SHOT, the pod's stack finding no socket) is not the
 * datapath's drop. Forget it. */
#if KPB_SINK
/* IPv4 frames the backends took (per CPU): with KPB_SINK the breakdown
 * repetition's count of what it delivered, in place of the latency probe's
 * sink (one program a packet at the backend instead of two). */
BPF_PERCPU_ARRAY(sunk, u64, 1);
#endif

int kpb_delivered(struct __sk_buff *skb)
{
    kpb_forget(kpb_skb_addr(skb));
#if KPB_SINK
    /* As the latency probe's sink mode: every IPv4 frame is counted and dropped
     * here (ARP passes), forgotten first, so the drop is not the datapath's. */
    if (skb->protocol != htons(KPB_ETH_P_IP))
        return TC_ACT_UNSPEC;
    u32 zero = 0;
    u64 *n = sunk.lookup(&zero);
    if (n)
        (*n)++;
    return TC_ACT_SHOT;
#else
    return TC_ACT_UNSPEC;
#endif
}

/* The same at the sockets of the datapath's own processes (a userspace proxy,
 * cgroup_skb ingress of their cgroup): a packet the proxy receives has crossed
 * the part of the datapath that the client's skb takes, and its skb may end
 * without any tracepoint (UDP frees a read datagram that way), so its address
 * must be forgotten here or a later skb at that address would count. */
int kpb_delivered_cg(struct __sk_buff *skb)
{
    kpb_forget(kpb_skb_addr(skb));
    return 1; /* allow */
}
#endif
