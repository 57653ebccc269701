/* cpu.c - CPU time the kernel spends in NET_RX softirq processing.
 *
 * Measures: per CPU, the sum of (softirq_exit - softirq_entry) for the
 *   NET_RX vector, and how many NET_RX softirqs ran. With veth every hop of a
 *   packet (node forwarding, netfilter, the datapath, delivery to the pod) runs
 *   in NET_RX, so total / packets delivered is the kernel's CPU per packet.
 * Attaches: tracepoints irq:softirq_entry and irq:softirq_exit (all CPUs,
 *   all namespaces). The NET_RX vector number is read by the loader from the
 *   tracepoint's own format file and passed as KPB_NET_RX.
 * Overhead: two tracepoint hits per softirq of any vector (not per packet:
 *   one NET_RX softirq handles a batch), a compare, a per-CPU store.
 *   Measured (docs/probes.md, 2026-11-29, 2-vCPU Firecracker VM, kernel
 *   6.18) with one softirq per injected packet: top-speed throughput -7 to
 *   -9 %, about +0.3-0.4 us per packet.
 * Limits: counts every NET_RX softirq on the machine, not only the run's
 *   packets - measure at a fixed load on an otherwise idle machine. Packets
 *   processed outside softirq (e.g. a process-context netif_receive_skb, busy
 *   polling) are not counted. A softirq already running when the window
 *   starts is counted in part.
 */
#ifndef KPB_NET_RX
#error "KPB_NET_RX (the NET_RX softirq vector number) must be defined by the loader"
#endif

enum { S_NS, S_RUNS, S_N };

BPF_PERCPU_ARRAY(entered_ns, u64, 1);
BPF_PERCPU_ARRAY(stats, u64, S_N);

TRACEPOINT_PROBE(irq, softirq_entry)
{
    if (args->vec != KPB_NET_RX)
        return 0;
    u32 zero = 0;
    u64 *t = entered_ns.lookup(&zero);
    if (t)
        *t = bpf_ktime_get_ns();
    return 0;
}

TRACEPOINT_PROBE(irq, softirq_exit)
{
    if (args->vec != KPB_NET_RX)
        return 0;
    u32 zero = 0, k_ns = S_NS, k_runs = S_RUNS;
    u64 *t = entered_ns.lookup(&zero);
    if (!t || !*t)
        return 0; /* entered before the probe attached */
    u64 delta = bpf_ktime_get_ns() - *t;
    *t = 0;
    u64 *ns = stats.lookup(&k_ns), *runs = stats.lookup(&k_runs);
    if (ns)
        *ns += delta;
    if (runs)
        (*runs)++;
    return 0;
}
