/* oneway.c - one-way times of socket request/response workloads, both directions.
 *
 * Measures: for every request the client pod sends and every response a
 *   backend pod sends back, bpf_ktime_get_ns() as the packet leaves its sender's
 *   eth0 (tc egress) and as it reaches the receiver's eth0 (tc ingress); both
 *   stamps on the same host clock (CLOCK_MONOTONIC), so arrival - departure is
 *   the one-way time through the node(s) and the datapath, NAT included:
 *     request:  client pod egress  -> backend pod ingress (kpb_req_depart, kpb_req_arrive)
 *     response: backend pod egress -> client pod ingress  (kpb_resp_depart, kpb_resp_arrive)
 * Matching: NAT rewrites addresses (and a NodePort's SNAT the source address)
 *   between the two ends, so a packet is matched at its two ends by what NAT
 *   keeps: the protocol, the direction, the client-side port (the source port of
 *   a request, the destination port of a response) and
 *     TCP: the segment's sequence and acknowledgment numbers; only data-bearing
 *          segments are timed (SYNs are counted at every hook, not timed). With
 *          KPB_MATCH_PORT 0 the port is left out of a TCP key: SNAT with a random
 *          source port (kube-proxy's MASQUERADE --random-fully, NodePort) changes
 *          it, while both random initial sequence numbers still tell connections
 *          apart;
 *     UDP: the first KPB_ID_BYTES bytes of the payload (sockperf's message header:
 *          flags, length and the message's sequence number); a shorter payload
 *          counts as short and is not timed. The port always stays in a UDP key
 *          (every flow's messages are numbered alike): a datagram whose port SNAT
 *          changed arrives unmatched.
 *   A departure whose key is already in flight (a TCP retransmission) keeps the
 *   first stamp and counts a duplicate; an arrival with no departure in flight
 *   counts as unmatched and is never paired with anything else. A departure that
 *   finds the in-flight map full is counted (full), not stored.
 * Attaches: tc clsact egress and ingress of the client pod's eth0 and of every
 *   backend pod's eth0, cls_bpf direct-action; every program returns
 *   TC_ACT_UNSPEC (the packet goes on, the next filter still runs).
 * Reads: only the packet (bpf_skb_load_bytes); IPv4 with options (ihl), TCP
 *   with options (doff), UDP; non-first fragments are ignored.
 * Overhead: per packet and hook, a few bpf_skb_load_bytes, a hash update or
 *   lookup and delete, one sample store: this probe is attached only in a socket
 *   point's breakdown repetition, never in a measured one (docs/sockets.md).
 * Limits: KPB_CAPACITY samples per direction (more count as overflow);
 *   KPB_INFLIGHT packets in flight at once.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>

#ifndef KPB_CAPACITY
#define KPB_CAPACITY 1048576
#endif
#ifndef KPB_INFLIGHT
#define KPB_INFLIGHT 65536
#endif
#ifndef KPB_MATCH_PORT
#define KPB_MATCH_PORT 1
#endif
#define KPB_ID_BYTES 16

enum { D_REQUEST, D_RESPONSE };
/* Counters: per hook the timed (identified) packets and the SYNs seen, then the rest. */
enum {
    C_REQ_DEPART, C_REQ_ARRIVE, C_RESP_DEPART, C_RESP_ARRIVE,
    C_SYN_REQ_DEPART, C_SYN_REQ_ARRIVE, C_SYN_RESP_DEPART, C_SYN_RESP_ARRIVE,
    C_DUPLICATE, C_UNMATCHED, C_FULL, C_OVERFLOW, C_SHORT, C_N
};

struct kpb_key {
    u8 proto;
    u8 dir;
    u16 client_port;
    u32 seq; /* TCP sequence number (0 for UDP) */
    u32 ack; /* TCP acknowledgment number (0 for UDP) */
    u8 id[KPB_ID_BYTES]; /* UDP payload head (zeros for TCP) */
};

BPF_HASH(inflight, struct kpb_key, u64, KPB_INFLIGHT);
/* Samples of direction d at [d * KPB_CAPACITY + i]; mmappable: one copy to read. */
BPF_F_TABLE("array", u32, u64, samples, 2 * KPB_CAPACITY, BPF_F_MMAPABLE);
BPF_ARRAY(next, u64, 2); /* samples written per direction (beyond capacity: overflow) */
BPF_PERCPU_ARRAY(counts, u64, C_N);

static __always_inline void kpb_count(u32 which)
{
    u64 *c = counts.lookup(&which);
    if (c)
        (*c)++;
}

/* Fill the key of a TCP data segment or UDP datagram (0), a SYN (1), or neither (-1). */
static __always_inline int kpb_parse(struct __sk_buff *skb, int response, struct kpb_key *k)
{
    u16 eth_type, frag, tot_len, ports[2];
    u8 vihl, proto, doff, flags;
    u32 off, ihl;

    if (bpf_skb_load_bytes(skb, 12, &eth_type, 2) < 0 || eth_type != htons(ETH_P_IP))
        return -1;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0 || (vihl >> 4) != 4 || (vihl & 0xf) < 5)
        return -1;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 2, &tot_len, 2) < 0)
        return -1;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &frag, 2) < 0 || (ntohs(frag) & 0x1fff))
        return -1;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1) < 0)
        return -1;
    ihl = (vihl & 0xf) * 4;
    off = ETH_HLEN + ihl;
    if (bpf_skb_load_bytes(skb, off, ports, 4) < 0)
        return -1;
    k->proto = proto;
    k->dir = response ? D_RESPONSE : D_REQUEST;
    k->client_port = response ? ports[1] : ports[0];
    if (proto == IPPROTO_TCP) {
        if (bpf_skb_load_bytes(skb, off + 12, &doff, 1) < 0 || (doff >> 4) < 5)
            return -1;
        if (bpf_skb_load_bytes(skb, off + 13, &flags, 1) < 0)
            return -1;
        if (flags & 0x02) /* SYN (or SYN-ACK): counted, not timed */
            return 1;
        if ((u32)ntohs(tot_len) <= ihl + (doff >> 4) * 4)
            return -1; /* no data: a bare ACK or FIN */
        if (bpf_skb_load_bytes(skb, off + 4, &k->seq, 4) < 0
            || bpf_skb_load_bytes(skb, off + 8, &k->ack, 4) < 0)
            return -1;
        if (!KPB_MATCH_PORT)
            k->client_port = 0;
        return 0;
    }
    if (proto == IPPROTO_UDP) {
        u16 udp_len;
        if (bpf_skb_load_bytes(skb, off + 4, &udp_len, 2) < 0)
            return -1;
        if (ntohs(udp_len) < 8 + KPB_ID_BYTES
            || bpf_skb_load_bytes(skb, off + 8, k->id, KPB_ID_BYTES) < 0) {
            kpb_count(C_SHORT);
            return -1;
        }
        return 0;
    }
    return -1;
}

static __always_inline void kpb_depart(struct __sk_buff *skb, int response)
{
    struct kpb_key k = {};
    int what = kpb_parse(skb, response, &k);
    if (what < 0)
        return;
    if (what == 1) {
        kpb_count(response ? C_SYN_RESP_DEPART : C_SYN_REQ_DEPART);
        return;
    }
    /* Stamped after the parse at both ends: neither parse is inside a sample. */
    u64 now = bpf_ktime_get_ns();
    kpb_count(response ? C_RESP_DEPART : C_REQ_DEPART);
    int err = inflight.insert(&k, &now);
    if (err == -17) /* -EEXIST: a retransmission; the first departure stands */
        kpb_count(C_DUPLICATE);
    else if (err)
        kpb_count(C_FULL);
}

static __always_inline void kpb_arrive(struct __sk_buff *skb, int response)
{
    struct kpb_key k = {};
    int what = kpb_parse(skb, response, &k);
    if (what < 0)
        return;
    if (what == 1) {
        kpb_count(response ? C_SYN_RESP_ARRIVE : C_SYN_REQ_ARRIVE);
        return;
    }
    u64 now = bpf_ktime_get_ns();
    kpb_count(response ? C_RESP_ARRIVE : C_REQ_ARRIVE);
    u64 *then = inflight.lookup(&k);
    if (!then) {
        kpb_count(C_UNMATCHED);
        return;
    }
    u64 delta = now - *then;
    inflight.delete(&k);
    u32 d = k.dir;
    u64 *n = next.lookup(&d);
    if (!n)
        return;
    u64 i = __sync_fetch_and_add(n, 1);
    if (i >= KPB_CAPACITY) {
        kpb_count(C_OVERFLOW);
        return;
    }
    u32 slot = d * KPB_CAPACITY + (u32)i;
    u64 *s = samples.lookup(&slot);
    if (s)
        *s = delta;
}

int kpb_req_depart(struct __sk_buff *skb)
{
    kpb_depart(skb, 0);
    return TC_ACT_UNSPEC;
}

int kpb_req_arrive(struct __sk_buff *skb)
{
    kpb_arrive(skb, 0);
    return TC_ACT_UNSPEC;
}

int kpb_resp_depart(struct __sk_buff *skb)
{
    kpb_depart(skb, 1);
    return TC_ACT_UNSPEC;
}

int kpb_resp_arrive(struct __sk_buff *skb)
{
    kpb_arrive(skb, 1);
    return TC_ACT_UNSPEC;
}
