/* effect.c - when traffic really reached each backend: time to effect of a rule change.
 *
 * Measures: for every identified packet (payload "KPB1" + u32 sequence, as
 *   bench.measure.traffic builds them) arriving at a backend pod, the first and last
 *   arrival time (bpf_ktime_get_ns, CLOCK_MONOTONIC - the clock of Python's
 *   time.monotonic_ns) and a count, keyed by the packet's destination address,
 *   which after the node's DNAT is the backend pod's own IP. From these the
 *   harness reads the first packet that reached a new endpoint after a change
 *   was issued, and the last one that reached a removed one.
 * Attaches: tc clsact ingress of every backend pod's eth0 (cls_bpf,
 *   direct-action); drops the identified packets (TC_ACT_SHOT) so no socket,
 *   ICMP error or reply perturbs what is measured.
 * Overhead: a few packet loads and one hash update per packet.
 * Limits: IPv4, UDP or TCP; non-first fragments ignored. Resolution is the
 *   packet spacing of the traffic (1 / rate).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "kpb_identity.h"

struct seen_t {
    u64 first_ns;
    u64 last_ns;
    u64 packets;
};

BPF_HASH(seen, u32, struct seen_t, 4096);  /* destination IPv4 (network order) -> arrivals */

int kpb_effect(struct __sk_buff *skb)
{
    u32 seq, daddr;

    if (kpb_identity(skb, &seq) == KPB_ID_NONE
        || bpf_skb_load_bytes(skb, ETH_HLEN + 16, &daddr, 4) < 0)
        return TC_ACT_OK;

    u64 now = bpf_ktime_get_ns();
    struct seen_t fresh = {now, now, 1};
    struct seen_t *s = seen.lookup(&daddr);
    if (!s) {
        seen.update(&daddr, &fresh);
    } else {
        s->last_ns = now;
        __sync_fetch_and_add(&s->packets, 1);
    }
    return TC_ACT_SHOT;
}
