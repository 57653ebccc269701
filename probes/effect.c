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
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>

#define KPB_MAGIC 0x4b504231 /* "KPB1" read as a big-endian u32 */

struct seen_t {
    u64 first_ns;
    u64 last_ns;
    u64 packets;
};

BPF_HASH(seen, u32, struct seen_t, 4096);  /* destination IPv4 (network order) -> arrivals */

int kpb_effect(struct __sk_buff *skb)
{
    u16 eth_type, frag;
    u8 vihl, proto, doff;
    u32 daddr, magic, off;

    if (bpf_skb_load_bytes(skb, 12, &eth_type, 2) < 0 || eth_type != htons(ETH_P_IP))
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0 || (vihl >> 4) != 4 || (vihl & 0xf) < 5)
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &frag, 2) < 0 || (ntohs(frag) & 0x1fff))
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1) < 0)
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 16, &daddr, 4) < 0)
        return TC_ACT_OK;
    off = ETH_HLEN + (vihl & 0xf) * 4;
    if (proto == IPPROTO_UDP) {
        off += 8;
    } else if (proto == IPPROTO_TCP) {
        if (bpf_skb_load_bytes(skb, off + 12, &doff, 1) < 0)
            return TC_ACT_OK;
        off += (doff >> 4) * 4;
    } else {
        return TC_ACT_OK;
    }
    if (off > 256 || bpf_skb_load_bytes(skb, off, &magic, 4) < 0 || ntohl(magic) != KPB_MAGIC)
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
