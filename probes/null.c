/* null.c - an empty tc program: what one program run costs in place, body aside.
 *
 * Measures: nothing itself. With the kernel's run-time statistics on, its
 *   run_time_ns / run_cnt is what the statistics' two clock reads around a
 *   run (and an empty body) put into every program's recorded time, where the
 *   probes run and at the scenario's own rate - caches as cold as theirs, which
 *   BPF_PROG_TEST_RUN's tight loop of an empty program is not.
 * Attaches: tc ingress of every backend pod's eth0, before every other probe
 *   (bench/measure/probes/null.py), so it sees every packet they see there.
 * Overhead: one program run a packet at that hook; attached only while the
 *   probes' own cost is measured (bench/measure/overhead.py), never in a
 *   measured repetition.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

/* TC_ACT_UNSPEC: the next filter on the hook runs (see latency.c). */
int kpb_null(struct __sk_buff *skb)
{
    return TC_ACT_UNSPEC;
}
