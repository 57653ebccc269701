/* cpu.c - CPU time the kernel spends in NET_RX softirq processing.
 *
 * Measures: per CPU, the sum of (softirq_exit - softirq_entry) for the
 *   NET_RX vector, and how many NET_RX softirqs ran. With veth every hop of a
 *   packet (node forwarding, netfilter, the datapath, delivery to the pod) runs
 *   in NET_RX, so total / packets delivered is the kernel's CPU per packet.
 *   Apart, the part of it that ran while a task of one cgroup (config[0], the
 *   datapath's own processes; 0: none) was current: without
 *   CONFIG_IRQ_TIME_ACCOUNTING the kernel charges that softirq time to the
 *   task too, so the loader subtracts it from the cgroup's CPU time and no
 *   nanosecond is counted twice.
 * Attaches: raw tracepoints softirq_entry and softirq_exit (all CPUs, all
 *   namespaces). Raw, not the irq: tracepoints: a raw tracepoint hands the
 *   program the tracepoint's arguments without the kernel first filling a
 *   trace record, which is most of a classic tracepoint program's cost. The
 *   NET_RX vector number is read by the loader from the irq:softirq_entry
 *   format file and passed as KPB_NET_RX.
 * Overhead: two raw tracepoint hits per softirq of any vector (not per
 *   packet: one NET_RX softirq handles a batch), a compare; for NET_RX two
 *   clock reads, per-CPU stores and one cgroup id read. Measured in
 *   docs/probes.md (with the latency probe, at top speed) and by every run
 *   (probe_overhead in the result).
 * Own share (KPB_GAP, bench.measure.overhead.cpu_probe_share): the part of this
 *   probe inside the window it times - its entry program after the clock read,
 *   its exit program up to it, and the hook's dispatch between - cannot be
 *   timed by the probe itself. Built with KPB_GAP, two more programs bracket it:
 *   kpb_gap_entry, attached to softirq_entry after this probe's entry, reads the
 *   clock as it starts; kpb_gap_exit, attached to softirq_exit before this
 *   probe's exit, reads it as it ends. (gap_entry's clock - the entry stamp) +
 *   (the exit stamp - gap_exit's clock), per NET_RX softirq, holds all of this
 *   probe's time inside its window, plus the bracketing programs' own edges: an
 *   upper bound on what the probe adds to the figure it reports. Those edges are
 *   measured apart, in the same softirqs: kpb_cal_stamp (built as kpb_gap_exit)
 *   and kpb_cal_gap (built as kpb_gap_entry), attached one after the other behind
 *   this probe's exit, time the gap between two such programs with nothing in
 *   it; the bound less that is the estimate of the probe's own share. KPB_PAD=N
 *   adds N clock reads inside the window (a known workload for the tests).
 * Limits: counts every NET_RX softirq on the machine, not only the run's
 *   packets - measure at a fixed load on an otherwise idle machine. Packets
 *   processed outside softirq (e.g. a process-context netif_receive_skb, busy
 *   polling) are not counted. A softirq already running when the window
 *   starts is counted in part.
 */
#ifndef KPB_NET_RX
#error "KPB_NET_RX (the NET_RX softirq vector number) must be defined by the loader"
#endif

enum { S_NS, S_RUNS, S_GROUP_NS, S_N };

BPF_PERCPU_ARRAY(entered_ns, u64, 1);
BPF_PERCPU_ARRAY(stats, u64, S_N);
BPF_ARRAY(config, u64, 1); /* [0] = id of the cgroup whose share is kept apart (0: none) */

#ifdef KPB_GAP
enum { G_ENTRY_NS, G_EXIT_NS, G_RUNS, G_CAL_NS, G_CAL_RUNS, G_N };
BPF_PERCPU_ARRAY(gap_stats, u64, G_N);
BPF_PERCPU_ARRAY(gap_exit_ns, u64, 1); /* kpb_gap_exit's clock, for the exit program */
BPF_PERCPU_ARRAY(cal_ns, u64, 1);      /* kpb_cal_stamp's clock, for kpb_cal_gap */
#endif
#ifndef KPB_PAD
#define KPB_PAD 0
#endif

RAW_TRACEPOINT_PROBE(softirq_entry)
{
    if ((u32)ctx->args[0] != KPB_NET_RX)
        return 0;
    u32 zero = 0;
    u64 *t = entered_ns.lookup(&zero);
    if (t)
        *t = bpf_ktime_get_ns();
#if KPB_PAD > 0
    /* Known work inside the window (tests of the own-share bound only). */
    u64 pad = 0;
    /* A bounded loop, not unrolled: hundreds of unrolled helper calls spill past the
     * 512-byte BPF stack. */
#pragma clang loop unroll(disable)
    for (int i = 0; i < KPB_PAD; i++)
        pad += bpf_ktime_get_ns();
    if (t && pad == 1)
        *t += 1;
#endif
    return 0;
}

RAW_TRACEPOINT_PROBE(softirq_exit)
{
    if ((u32)ctx->args[0] != KPB_NET_RX)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u32 zero = 0, k_ns = S_NS, k_runs = S_RUNS, k_group = S_GROUP_NS;
    u64 *t = entered_ns.lookup(&zero);
    if (!t || !*t)
        return 0; /* entered before the probe attached */
    u64 delta = now - *t;
    *t = 0;
#ifdef KPB_GAP
    {
        u32 k_exit = G_EXIT_NS;
        u64 *g = gap_exit_ns.lookup(&zero), *sum = gap_stats.lookup(&k_exit);
        if (g && *g && sum && now > *g)
            *sum += now - *g;
        if (g)
            *g = 0;
    }
#endif
    u64 *ns = stats.lookup(&k_ns), *runs = stats.lookup(&k_runs);
    if (ns)
        *ns += delta;
    if (runs)
        (*runs)++;
    u64 *group = config.lookup(&zero);
    if (group && *group && bpf_get_current_cgroup_id() == *group) {
        u64 *g = stats.lookup(&k_group);
        if (g)
            *g += delta;
    }
    return 0;
}

#ifdef KPB_GAP
/* Attached after the probe's own entry program: starts with the clock. */
int kpb_gap_entry(struct bpf_raw_tracepoint_args *ctx)
{
    u64 now = bpf_ktime_get_ns();
    if ((u32)ctx->args[0] != KPB_NET_RX)
        return 0;
    u32 zero = 0, k_entry = G_ENTRY_NS, k_runs = G_RUNS;
    u64 *t = entered_ns.lookup(&zero);
    if (!t || !*t || now < *t)
        return 0;
    u64 *sum = gap_stats.lookup(&k_entry), *runs = gap_stats.lookup(&k_runs);
    if (sum)
        *sum += now - *t;
    if (runs)
        (*runs)++;
    return 0;
}

/* Attached before the probe's own exit program: ends with the clock. */
int kpb_gap_exit(struct bpf_raw_tracepoint_args *ctx)
{
    if ((u32)ctx->args[0] != KPB_NET_RX)
        return 0;
    u32 zero = 0;
    u64 *g = gap_exit_ns.lookup(&zero);
    if (g)
        *g = bpf_ktime_get_ns();
    return 0;
}

/* The bracket's own edges: built as kpb_gap_exit, and as kpb_gap_entry; attached in
 * this order behind the probe's exit program, outside every window. */
int kpb_cal_stamp(struct bpf_raw_tracepoint_args *ctx)
{
    if ((u32)ctx->args[0] != KPB_NET_RX)
        return 0;
    u32 zero = 0;
    u64 *c = cal_ns.lookup(&zero);
    if (c)
        *c = bpf_ktime_get_ns();
    return 0;
}

int kpb_cal_gap(struct bpf_raw_tracepoint_args *ctx)
{
    u64 now = bpf_ktime_get_ns();
    if ((u32)ctx->args[0] != KPB_NET_RX)
        return 0;
    u32 zero = 0, k_cal = G_CAL_NS, k_runs = G_CAL_RUNS;
    u64 *c = cal_ns.lookup(&zero);
    if (!c || !*c || now < *c)
        return 0;
    u64 *sum = gap_stats.lookup(&k_cal), *runs = gap_stats.lookup(&k_runs);
    if (sum)
        *sum += now - *c;
    if (runs)
        (*runs)++;
    *c = 0;
    return 0;
}
#endif
