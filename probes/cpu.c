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

RAW_TRACEPOINT_PROBE(softirq_entry)
{
    if ((u32)ctx->args[0] != KPB_NET_RX)
        return 0;
    u32 zero = 0;
    u64 *t = entered_ns.lookup(&zero);
    if (t)
        *t = bpf_ktime_get_ns();
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
