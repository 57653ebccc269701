/* kpb_identity.h - the harness's packet identity, read from a tc program's packet.
 *
 * bench.measure.traffic puts "KPB1" + a u32 big-endian sequence number at the
 * start of every identified packet's transport payload. kpb_identity() finds it
 * behind an IPv4 header with options (ihl) and a UDP or TCP header with options
 * (doff); non-first fragments and other protocols are not identified.
 *
 * Included by latency.c and transit.c. No map calls here: BCC rewrites map calls
 * in a probe's own file only, not in a header it includes. The loader writes this
 * file in place of its #include line wherever a probe's text is printed or
 * compiled from text (bench.measure.probes.loader.compiled_source).
 */
#ifndef KPB_IDENTITY_H
#define KPB_IDENTITY_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>

#define KPB_MAGIC 0x4b504231 /* "KPB1" read as a big-endian u32 */

enum {
    KPB_ID_NONE = -1,  /* not an identified packet */
    KPB_ID_LINEAR = 0, /* identified, read from the skb's linear data */
    KPB_ID_COPIED = 1, /* identified, copied out of a paged skb (the slow path) */
};

/* Slow path: the headers are not all in the skb's linear data (a paged skb),
 * so they are copied out with bpf_skb_load_bytes. */
static __always_inline int kpb_identity_copied(struct __sk_buff *skb, u32 *magic, u32 *seq)
{
    u16 eth_type;
    u8 vihl, proto, doff;
    u16 frag;
    u32 id[2], off;

    /* The frame's own EtherType: skb->protocol of an AF_PACKET-injected frame
     * depends on how the sender opened its socket. */
    if (bpf_skb_load_bytes(skb, 12, &eth_type, 2) < 0 || eth_type != htons(ETH_P_IP))
        return KPB_ID_NONE;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0 || (vihl >> 4) != 4 || (vihl & 0xf) < 5)
        return KPB_ID_NONE;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &frag, 2) < 0 || (ntohs(frag) & 0x1fff))
        return KPB_ID_NONE;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1) < 0)
        return KPB_ID_NONE;
    off = ETH_HLEN + (vihl & 0xf) * 4;
    if (proto == IPPROTO_UDP) {
        off += 8;
    } else if (proto == IPPROTO_TCP) {
        if (bpf_skb_load_bytes(skb, off + 12, &doff, 1) < 0 || (doff >> 4) < 5)
            return KPB_ID_NONE;
        off += (doff >> 4) * 4;
    } else {
        return KPB_ID_NONE;
    }
    if (bpf_skb_load_bytes(skb, off, id, sizeof(id)) < 0 || id[0] != htonl(KPB_MAGIC))
        return KPB_ID_NONE;
    *magic = id[0];
    *seq = ntohl(id[1]);
    return KPB_ID_COPIED;
}

/* The packet's identity: KPB_ID_LINEAR or KPB_ID_COPIED with *seq set (host
 * order), or KPB_ID_NONE. Reads the linear data in place where it holds the
 * headers (a few loads, no helper call). */
static __always_inline int kpb_identity(struct __sk_buff *skb, u32 *seq)
{
    u8 *p = (u8 *)(long)skb->data;
    u8 *end = (u8 *)(long)skb->data_end;
    u32 magic;

    /* The common case first: UDP behind an IPv4 header without options. */
    if (p + ETH_HLEN + 20 + 8 + 8 <= end && *(u16 *)(p + 12) == htons(ETH_P_IP)
        && p[ETH_HLEN] == 0x45 && p[ETH_HLEN + 9] == IPPROTO_UDP
        && !(*(u16 *)(p + ETH_HLEN + 6) & htons(0x1fff))) {
        if (*(u32 *)(p + ETH_HLEN + 28) != htonl(KPB_MAGIC))
            return KPB_ID_NONE;
        *seq = ntohl(*(u32 *)(p + ETH_HLEN + 32));
        return KPB_ID_LINEAR;
    }
    if (p + ETH_HLEN + 20 > end)
        return kpb_identity_copied(skb, &magic, seq);
    if (*(u16 *)(p + 12) != htons(ETH_P_IP))
        return KPB_ID_NONE;
    u8 vihl = p[ETH_HLEN];
    if ((vihl >> 4) != 4 || (vihl & 0xf) < 5)
        return KPB_ID_NONE;
    if (ntohs(*(u16 *)(p + ETH_HLEN + 6)) & 0x1fff)
        return KPB_ID_NONE; /* a non-first fragment */
    u8 proto = p[ETH_HLEN + 9];
    u8 *l4 = p + ETH_HLEN + (vihl & 0xf) * 4;
    u8 *id;
    if (proto == IPPROTO_UDP) {
        id = l4 + 8;
    } else if (proto == IPPROTO_TCP) {
        /* One pointer, checked and read: the verifier tracks bounds per register. */
        asm volatile("" : "+r"(l4));
        if (l4 + 13 > end)
            return kpb_identity_copied(skb, &magic, seq);
        u8 doff = l4[12] >> 4;
        if (doff < 5)
            return KPB_ID_NONE;
        id = l4 + doff * 4;
    } else {
        return KPB_ID_NONE;
    }
    asm volatile("" : "+r"(id));
    if (id + 8 > end)
        return kpb_identity_copied(skb, &magic, seq);
    if (*(u32 *)id != htonl(KPB_MAGIC))
        return KPB_ID_NONE;
    *seq = ntohl(*(u32 *)(id + 4));
    return KPB_ID_LINEAR;
}

#endif
