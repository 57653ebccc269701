/* gone.c - a removed endpoint's pod is gone: packets still sent to it are lost.
 *
 * Measures: per destination address at the backend pods (after the node's DNAT,
 *   the pod's own IP), packets arriving (to find the endpoint established flows are
 *   pinned to); and, while gone[0] holds a pod IP, the packets to that IP, which it
 *   drops (TC_ACT_SHOT: the pod is gone), with the first and last such drop
 *   (bpf_ktime_get_ns, CLOCK_MONOTONIC) and their count: how long traffic kept
 *   going to the removed endpoint. The disruption scenario's endpoint-removed event
 *   (bench/measure/disruption_runner.py) sets and clears gone[0].
 * Attaches: tc clsact ingress of every backend pod's eth0 (cls_bpf, direct-action;
 *   TC_ACT_UNSPEC for what it keeps, so the next filter runs),
 *   before every other probe there (the latency probe must not stamp a dropped
 *   packet as delivered).
 * Overhead: a few packet loads, one array and one hash lookup per packet.
 * Limits: IPv4 only.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>

BPF_ARRAY(gone, u32, 1);           /* the gone pod's IPv4 (network order); 0: none */
BPF_ARRAY(dropped, u64, 3);        /* first drop ns, last drop ns, packets dropped */
BPF_HASH(arrived, u32, u64, 4096); /* destination IPv4 (network order) -> packets */

int kpb_gone(struct __sk_buff *skb)
{
    u16 eth_type;
    u32 daddr, k0 = 0, k1 = 1, k2 = 2;

    if (bpf_skb_load_bytes(skb, 12, &eth_type, 2) < 0 || eth_type != htons(ETH_P_IP))
        return TC_ACT_UNSPEC;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 16, &daddr, 4) < 0)
        return TC_ACT_UNSPEC;
    u32 *g = gone.lookup(&k0);
    if (g && *g && *g == daddr) {
        u64 now = bpf_ktime_get_ns();
        u64 *first = dropped.lookup(&k0), *last = dropped.lookup(&k1);
        u64 *n = dropped.lookup(&k2);
        if (first && last && n) {
            if (!*first)
                *first = now;
            *last = now;
            __sync_fetch_and_add(n, 1);
        }
        return TC_ACT_SHOT;
    }
    u64 one = 1;
    u64 *c = arrived.lookup(&daddr);
    if (c)
        __sync_fetch_and_add(c, 1);
    else
        arrived.update(&daddr, &one);
    return TC_ACT_UNSPEC;
}
