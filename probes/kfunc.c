/*
 * kfunc.c - time spent inside netfilter and IPVS kernel functions.
 *
 * What: for each probed function (nf_hook_slow, ipt_do_table, nft_do_chain and
 *   the IPVS hook the kernel has, e.g. ip_vs_in_hook), the number of calls,
 *   the summed wall time from entry to return, and a log2 histogram of single
 *   call times. Divided by the packets the run delivered, this is the
 *   per-packet breakdown: how much of a packet's cost is netfilter's hook loop,
 *   iptables' table walk, nftables' chain walk, or IPVS.
 * Where: a kprobe and a kretprobe on each function (KPB_FN_ID(n) is the
 *   function's index, set by the loader, which only attaches functions the
 *   running kernel has). Calls nest (nf_hook_slow calls ipt_do_table; a
 *   packet IPVS transmits re-enters the hooks) and softirqs interrupt process
 *   context on the same CPU, so entry times live on a per-CPU stack per
 *   function: returns always match the most recent entry on that CPU.
 * Times are inclusive: nf_hook_slow contains the tables it calls.
 * Overhead: a kprobe/kretprobe pair costs on the order of 0.1-0.5 us per call
 *   on a native kernel (much more under TCG); these functions run several
 *   times per packet, so run this probe only where that cost is accepted (it
 *   adds to the measured latency) - the runner attaches it in VMs, where
 *   kprobes exist, and records the overhead like every other probe's.
 * Needs: CONFIG_KPROBES, CONFIG_KPROBE_EVENTS; reads no kernel structs.
 */
#include <uapi/linux/ptrace.h>

#ifndef KPB_NFUNCS
#define KPB_NFUNCS 4
#endif
#define KPB_DEPTH 8
#define KPB_SLOTS 40

struct kpb_stack {
    u32 depth;
    u32 overflow;
    u64 ts[KPB_DEPTH];
};

struct kpb_hkey {
    u32 fn;
    u32 slot;
};

BPF_PERCPU_ARRAY(stacks, struct kpb_stack, KPB_NFUNCS);
/* per function: [0] calls, [1] summed ns, [2] unmatched returns */
BPF_PERCPU_ARRAY(calls, u64, KPB_NFUNCS);
BPF_PERCPU_ARRAY(total_ns, u64, KPB_NFUNCS);
BPF_PERCPU_ARRAY(unmatched, u64, KPB_NFUNCS);
BPF_HASH(hist, struct kpb_hkey, u64, KPB_NFUNCS * KPB_SLOTS);

static __always_inline int kpb_enter(u32 fn)
{
    struct kpb_stack *st = stacks.lookup(&fn);
    if (!st)
        return 0;
    u32 d = st->depth;
    if (d < KPB_DEPTH) {
        st->ts[d & (KPB_DEPTH - 1)] = bpf_ktime_get_ns();
    } else {
        st->overflow++;
    }
    st->depth = d + 1;
    return 0;
}

static __always_inline int kpb_leave(u32 fn)
{
    u64 now = bpf_ktime_get_ns();
    struct kpb_stack *st = stacks.lookup(&fn);
    if (!st)
        return 0;
    if (st->depth == 0) {
        /* attached while the function was running: its entry was never seen */
        unmatched.increment(fn);
        return 0;
    }
    u32 d = st->depth - 1;
    st->depth = d;
    if (d >= KPB_DEPTH)
        return 0;
    u64 delta = now - st->ts[d & (KPB_DEPTH - 1)];
    calls.increment(fn);
    u64 *sum = total_ns.lookup(&fn);
    if (sum)
        *sum += delta;
    struct kpb_hkey key = {.fn = fn, .slot = bpf_log2l(delta)};
    if (key.slot >= KPB_SLOTS)
        key.slot = KPB_SLOTS - 1;
    hist.increment(key);
    return 0;
}

#define KPB_FN(n)                                                  \
    int kpb_enter_##n(struct pt_regs *ctx) { return kpb_enter(n); } \
    int kpb_leave_##n(struct pt_regs *ctx) { return kpb_leave(n); }

KPB_FN(0)
KPB_FN(1)
KPB_FN(2)
KPB_FN(3)
