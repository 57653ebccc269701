/* lb.c - kpbench's eBPF service load balancer at tc (clsact) and XDP.
 *
 * What: Kubernetes Services (ClusterIP, NodePort) the way Cilium's kube-proxy
 *   replacement implements them, written for kpbench: a frontend lookup in
 *   lb4_services, a random backend slot (or the sessionAffinity: ClientIP
 *   entry), DNAT to the backend, SNAT to the node for NodePort with
 *   externalTrafficPolicy: Cluster (the client address is kept for Local),
 *   connection tracking so every later packet of a flow goes to the same
 *   backend, and reverse translation of the replies. A frontend with no
 *   backends is rejected at once with an ICMP port unreachable (the client
 *   sees "connection refused"); a NodePort with eTP Local and no local
 *   endpoint drops, as kube-proxy does. See lb4.h for the maps.
 * Where: kpb_lb_tc at tc clsact ingress (direct action) of every interface of
 *   a node (underlay ul0, pod-facing veths). kpb_lb_xdp on the node's underlay
 *   interface (the `xdp` datapath): it handles NodePort frontends and their
 *   replies only and forwards them with XDP_TX / XDP_REDIRECT, never entering
 *   the stack; everything else, and anything it cannot forward itself (no
 *   neighbour entry yet, no route), is passed on untouched to kpb_lb_tc, which
 *   finds the connection the XDP program already created.
 * Forwarding: after translation, bpf_fib_lookup() gives the egress interface
 *   and MACs; the packet is redirected there (TTL decremented, as a router
 *   does), or with bpf_redirect_neigh() when the neighbour is not resolved yet.
 *   Netfilter never sees translated packets.
 * Limits: IPv4, TCP and UDP only; IP fragments and ICMP errors about
 *   translated flows are left to the stack untranslated; the ICMP reject is
 *   only built for packets without IP options; a pod reaching itself through
 *   a service (hairpin) is not masqueraded; the SNAT port is the client's own
 *   one or one of SNAT_TRIES random ports, else the packet is dropped.
 * Cost: per packet one or two LRU hash lookups for an established flow; a new
 *   flow adds a frontend lookup, a slot lookup, a backend lookup and two CT
 *   inserts (plus two affinity lookups and an update with affinity).
 */
#include "lb4.h"
#include <uapi/linux/pkt_cls.h>

#define KPB_AF_INET 2
#define IP_HLEN 20
#define ICMP_DEST_UNREACH_T 3
#define ICMP_PORT_UNREACH_C 3

enum { V_PASS, V_XLATE, V_DROP, V_REJECT };

/* BCC 0.26 declares this helper with the 5.10 prototype; the kernel's takes plen too. */
#define kpb_redirect_neigh(ifindex, params, plen, flags)                                     \
    ((long (*)(u32, struct bpf_redir_neigh *, int, u64))BPF_FUNC_redirect_neigh)(              \
        ifindex, params, plen, flags)

struct tuple {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u16 tot_len; /* host order */
    __u8 proto;
    __u8 tcp_flags;
    __u8 ttl;
    __u8 l4_off;   /* from the start of the frame */
};

struct xlate {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
};

/* Parse Ethernet + IPv4 + the first bytes of TCP/UDP. -1: not ours (leave it). */
static __always_inline int parse(void *data, void *data_end, struct tuple *t)
{
    struct ethhdr *eth = data;
    __u8 *ip = data + ETH_HLEN;
    __u8 *l4;
    __u32 hl;

    if ((void *)(eth + 1) > data_end || eth->h_proto != htons(ETH_P_IP))
        return -1;
    if ((void *)(ip + IP_HLEN) > data_end || (ip[0] >> 4) != 4)
        return -1;
    hl = (ip[0] & 0xf) * 4;
    if (hl < IP_HLEN)
        return -1;
    /* Fragments (more-fragments or an offset) carry no usable ports: the stack's. */
    if (*(__be16 *)(ip + 6) & htons(0x3fff))
        return -1;
    t->proto = ip[9];
    t->ttl = ip[8];
    t->tot_len = ntohs(*(__be16 *)(ip + 2));
    t->saddr = *(__be32 *)(ip + 12);
    t->daddr = *(__be32 *)(ip + 16);
    l4 = ip + hl;
    if (t->proto == IPPROTO_TCP) {
        if ((void *)(l4 + 20) > data_end)
            return -1;
        t->tcp_flags = l4[13];
    } else if (t->proto == IPPROTO_UDP) {
        if ((void *)(l4 + 8) > data_end)
            return -1;
    } else {
        return -1;
    }
    t->sport = *(__be16 *)l4;
    t->dport = *(__be16 *)(l4 + 2);
    t->l4_off = ETH_HLEN + hl;
    return 0;
}

static __always_inline u64 ct_lifetime(struct tuple *t)
{
    if (t->proto != IPPROTO_TCP)
        return CT_LIFETIME_NONTCP;
    if ((t->tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == TCP_F_SYN)
        return CT_LIFETIME_SYN;
    return CT_LIFETIME_TCP;
}

/* Keep a live entry alive; a FIN or RST shortens it to CT_CLOSE_TIMEOUT. */
static __always_inline void ct_refresh(struct ct_entry *e, struct tuple *t, u64 now)
{
    u64 want;

    if (t->proto == IPPROTO_TCP && (t->tcp_flags & (TCP_F_FIN | TCP_F_RST))) {
        if (!(e->flags & CT_F_CLOSING)) {
            e->flags |= CT_F_CLOSING;
            e->expires_ns = now + CT_CLOSE_TIMEOUT;
        }
        return;
    }
    if (e->flags & CT_F_CLOSING)
        return;
    want = now + ct_lifetime(t);
    if (want > e->expires_ns + CT_REFRESH_NS)
        e->expires_ns = want;
}

/* What to do with a packet: pass it, translate it (into *x), drop or reject it.
 * nodeport_only: the XDP program, which acts on NodePort connections only. */
static __always_inline int lb4_decide(struct tuple *t, struct xlate *x, u64 now, int nodeport_only)
{
    struct ct_key key = {};
    struct ct_entry *e, fwd = {}, rev = {};
    struct lb4_service *svc;
    struct lb4_backend *be;
    struct lb4_reverse_nat *rn;
    u32 backend_id;
    __be16 port;
    int i;

    x->saddr = t->saddr;
    x->daddr = t->daddr;
    x->sport = t->sport;
    x->dport = t->dport;

    /* A reply of a translated connection. */
    key.saddr = t->saddr;
    key.daddr = t->daddr;
    key.sport = t->sport;
    key.dport = t->dport;
    key.proto = t->proto;
    key.dir = CT_REV;
    e = lb4_ct.lookup(&key);
    if (e && e->expires_ns > now) {
        if (nodeport_only && !(e->flags & CT_F_NODEPORT))
            return V_PASS;
        rn = lb4_reverse_nat.lookup(&e->rev_nat_index);
        if (!rn)
            return V_PASS; /* the frontend is gone */
        x->saddr = rn->address;
        x->sport = rn->port;
        if (e->flags & CT_F_SNAT) {
            x->daddr = e->nat_addr;
            x->dport = e->nat_port;
        }
        ct_refresh(e, t, now);
        return V_XLATE;
    }

    /* A later packet of a translated connection: same backend, if it still exists. */
    key.dir = CT_FWD;
    e = lb4_ct.lookup(&key);
    if (e && e->expires_ns > now && lb4_backends.lookup(&e->backend_id)) {
        int reopened = t->proto == IPPROTO_TCP && (e->flags & CT_F_CLOSING) &&
                       (t->tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == TCP_F_SYN;
        if (!reopened) {
            if (nodeport_only && !(e->flags & CT_F_NODEPORT))
                return V_PASS;
            x->daddr = e->nat_addr;
            x->dport = e->nat_port;
            if (e->flags & CT_F_SNAT) {
                x->saddr = e->snat_addr;
                x->sport = e->snat_port;
            }
            ct_refresh(e, t, now);
            return V_XLATE;
        }
    }

    /* A new connection to a frontend? */
    svc = lb4_lookup_service(t->daddr, t->dport, t->proto);
    if (!svc)
        return V_PASS;
    if (nodeport_only && !(svc->flags & SVC_F_NODEPORT))
        return V_PASS;
    if (svc->count == 0)
        return (svc->flags & SVC_F_DROP) ? V_DROP : V_REJECT;
    backend_id = lb4_select_backend(svc, t->daddr, t->dport, t->proto, t->saddr, now);
    be = lb4_backends.lookup(&backend_id);
    if (!be)
        return V_DROP;

    fwd.expires_ns = now + ct_lifetime(t);
    fwd.backend_id = backend_id;
    fwd.nat_addr = be->address;
    fwd.nat_port = be->port;
    fwd.rev_nat_index = svc->rev_nat_index;
    fwd.flags = (svc->flags & SVC_F_NODEPORT) ? CT_F_NODEPORT : 0;
    rev = fwd;
    x->daddr = be->address;
    x->dport = be->port;

    key.saddr = be->address;
    key.sport = be->port;
    key.dir = CT_REV;
    if (svc->flags & SVC_F_SNAT) {
        /* The backend answers the frontend address (a node IP) on a port of ours:
         * the client's own port if free, else a random one. */
        fwd.flags |= CT_F_SNAT;
        rev.flags |= CT_F_SNAT;
        rev.nat_addr = t->saddr;
        rev.nat_port = t->sport;
        key.daddr = t->daddr;
        port = t->sport;
#pragma unroll
        for (i = 0; i < SNAT_TRIES; i++) {
            struct ct_entry *old;

            key.dport = port;
            old = lb4_ct.lookup(&key);
            if (!old || old->expires_ns <= now ||
                (old->nat_addr == t->saddr && old->nat_port == t->sport))
                break;
            port = htons(SNAT_PORT_MIN + bpf_get_prandom_u32() % (65536 - SNAT_PORT_MIN));
        }
        if (i == SNAT_TRIES)
            return V_DROP;
        fwd.snat_addr = t->daddr;
        fwd.snat_port = port;
        x->saddr = t->daddr;
        x->sport = port;
    } else {
        key.daddr = t->saddr;
        key.dport = t->sport;
    }
    lb4_ct.update(&key, &rev);
    key.saddr = t->saddr;
    key.daddr = t->daddr;
    key.sport = t->sport;
    key.dport = t->dport;
    key.dir = CT_FWD;
    lb4_ct.update(&key, &fwd);
    lb4_count(ST_CT_NEW);
    return V_XLATE;
}

static __always_inline __u16 csum_fold(__u64 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)~sum;
}

/* ---------------------------------------------------------------- tc ---- */

static __always_inline int tc_rewrite(struct __sk_buff *skb, struct tuple *t, struct xlate *x)
{
    int l3 = ETH_HLEN, l4 = t->l4_off;
    int csum = l4 + (t->proto == IPPROTO_TCP ? 16 : 6);
    /* A UDP checksum of 0 means "none" and must stay 0. */
    __u64 mangled = t->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

    if (x->saddr != t->saddr) {
        if (bpf_l4_csum_replace(skb, csum, t->saddr, x->saddr,
                                BPF_F_PSEUDO_HDR | mangled | 4) < 0 ||
            bpf_l3_csum_replace(skb, l3 + 10, t->saddr, x->saddr, 4) < 0 ||
            bpf_skb_store_bytes(skb, l3 + 12, &x->saddr, 4, 0) < 0)
            return -1;
    }
    if (x->daddr != t->daddr) {
        if (bpf_l4_csum_replace(skb, csum, t->daddr, x->daddr,
                                BPF_F_PSEUDO_HDR | mangled | 4) < 0 ||
            bpf_l3_csum_replace(skb, l3 + 10, t->daddr, x->daddr, 4) < 0 ||
            bpf_skb_store_bytes(skb, l3 + 16, &x->daddr, 4, 0) < 0)
            return -1;
    }
    if (x->sport != t->sport) {
        if (bpf_l4_csum_replace(skb, csum, t->sport, x->sport, mangled | 2) < 0 ||
            bpf_skb_store_bytes(skb, l4, &x->sport, 2, 0) < 0)
            return -1;
    }
    if (x->dport != t->dport) {
        if (bpf_l4_csum_replace(skb, csum, t->dport, x->dport, mangled | 2) < 0 ||
            bpf_skb_store_bytes(skb, l4 + 2, &x->dport, 2, 0) < 0)
            return -1;
    }
    return 0;
}

/* Send a translated packet on, as a router would; the stack only if the FIB has no answer. */
static __always_inline int tc_forward(struct __sk_buff *skb, struct tuple *t, struct xlate *x)
{
    struct bpf_fib_lookup fib = {};
    struct bpf_redir_neigh nh = {};
    __be16 old_ttl, new_ttl;
    long rc;

    fib.family = KPB_AF_INET;
    fib.l4_protocol = t->proto;
    fib.sport = x->sport;
    fib.dport = x->dport;
    fib.tot_len = t->tot_len;
    fib.ipv4_src = x->saddr;
    fib.ipv4_dst = x->daddr;
    fib.ifindex = skb->ingress_ifindex;
    rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
    if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || t->ttl <= 1) {
        lb4_count(ST_TC_XLATE_STACK);
        return TC_ACT_OK;
    }
    old_ttl = htons((__u16)t->ttl << 8);
    new_ttl = htons((__u16)(t->ttl - 1) << 8);
    bpf_l3_csum_replace(skb, ETH_HLEN + 10, old_ttl, new_ttl, 2);
    t->ttl -= 1;
    bpf_skb_store_bytes(skb, ETH_HLEN + 8, &t->ttl, 1, 0);
    lb4_count(ST_TC_XLATE);
    if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
        bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0);
        bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0);
        return bpf_redirect(fib.ifindex, 0);
    }
    nh.nh_family = KPB_AF_INET;
    nh.ipv4_nh = fib.ipv4_dst;
    return kpb_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

struct icmp4_unreach {
    __u8 vihl;
    __u8 tos;
    __be16 tot_len;
    __be16 id;
    __be16 frag_off;
    __u8 ttl;
    __u8 protocol;
    __u16 check;
    __be32 saddr;
    __be32 daddr;
    __u8 type;
    __u8 code;
    __u16 csum;
    __be32 unused;
    __u8 orig[IP_HLEN + 8];
};

/* Answer with ICMP port unreachable from the frontend, back out the interface the
 * packet came in on: what kube-proxy's REJECT does for a service with no endpoints. */
static __always_inline int tc_reject(struct __sk_buff *skb, struct tuple *t)
{
    struct icmp4_unreach r = {};
    __u8 macs[2 * ETH_ALEN];
    __u8 swapped[2 * ETH_ALEN];
    int i;

    if (t->l4_off != ETH_HLEN + IP_HLEN)
        return TC_ACT_SHOT;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, r.orig, sizeof(r.orig)) < 0 ||
        bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
        return TC_ACT_SHOT;
#pragma unroll
    for (i = 0; i < ETH_ALEN; i++) {
        swapped[i] = macs[ETH_ALEN + i];
        swapped[ETH_ALEN + i] = macs[i];
    }
    r.vihl = 0x45;
    r.tot_len = htons(sizeof(r));
    r.ttl = 64;
    r.protocol = IPPROTO_ICMP;
    r.saddr = t->daddr;
    r.daddr = t->saddr;
    r.type = ICMP_DEST_UNREACH_T;
    r.code = ICMP_PORT_UNREACH_C;
    r.csum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.type, sizeof(r) - IP_HLEN, 0));
    r.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r, IP_HLEN, 0));
    if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
        bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0) < 0 ||
        bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
        return TC_ACT_SHOT;
    lb4_count(ST_TC_REJECT);
    return bpf_redirect(skb->ifindex, 0);
}

int kpb_lb_tc(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct tuple t = {};
    struct xlate x;
    int verdict;

    if (parse(data, data_end, &t) < 0)
        return TC_ACT_UNSPEC;
    lb4_count(ST_TC_SEEN);
    verdict = lb4_decide(&t, &x, bpf_ktime_get_ns(), 0);
    if (verdict == V_PASS)
        return TC_ACT_UNSPEC;
    if (verdict == V_REJECT)
        return tc_reject(skb, &t);
    if (verdict == V_DROP || tc_rewrite(skb, &t, &x) < 0) {
        lb4_count(ST_TC_DROP);
        return TC_ACT_SHOT;
    }
    return tc_forward(skb, &t, &x);
}

/* --------------------------------------------------------------- XDP ---- */

/* Incremental checksum update (RFC 1624) for a 32-bit field, in place. */
static __always_inline void csum_replace4(__u16 *sum, __be32 from, __be32 to)
{
    __u64 s = (__u16)~*sum;

    s += (__u16)~(from & 0xffff);
    s += (__u16)~(from >> 16);
    s += to & 0xffff;
    s += to >> 16;
    *sum = csum_fold(s);
}

static __always_inline void csum_replace2(__u16 *sum, __be16 from, __be16 to)
{
    __u64 s = (__u16)~*sum;

    s += (__u16)~from;
    s += to;
    *sum = csum_fold(s);
}

int kpb_lb_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct bpf_fib_lookup fib = {};
    struct tuple t = {};
    struct xlate x;
    struct ethhdr *eth;
    __u8 *ip, *l4;
    __u16 *l4sum;
    int verdict, i;
    long rc;

    if (parse(data, data_end, &t) < 0)
        return XDP_PASS;
    lb4_count(ST_XDP_SEEN);
    verdict = lb4_decide(&t, &x, bpf_ktime_get_ns(), 1);
    if (verdict == V_PASS)
        return XDP_PASS;
    if (verdict == V_DROP) {
        lb4_count(ST_XDP_DROP);
        return XDP_DROP;
    }
    if (verdict == V_REJECT || t.ttl <= 1) {
        lb4_count(ST_XDP_PASS_SLOW); /* tc builds the ICMP answers */
        return XDP_PASS;
    }

    fib.family = KPB_AF_INET;
    fib.l4_protocol = t.proto;
    fib.sport = x.sport;
    fib.dport = x.dport;
    fib.tot_len = t.tot_len;
    fib.ipv4_src = x.saddr;
    fib.ipv4_dst = x.daddr;
    fib.ifindex = ctx->ingress_ifindex;
    rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
        /* Untouched: kpb_lb_tc finds the connection made here and finishes the job
         * (bpf_redirect_neigh resolves the neighbour for the next packets). */
        lb4_count(ST_XDP_PASS_SLOW);
        return XDP_PASS;
    }

    /* Packet pointers again, for the verifier: bounds as parse() checked them. */
    eth = data;
    ip = data + ETH_HLEN;
    if ((void *)(ip + IP_HLEN) > data_end)
        return XDP_PASS;
    l4 = data + t.l4_off;
    if (t.proto == IPPROTO_TCP) {
        if ((void *)(l4 + 20) > data_end)
            return XDP_PASS;
        l4sum = (__u16 *)(l4 + 16);
    } else {
        if ((void *)(l4 + 8) > data_end)
            return XDP_PASS;
        l4sum = (__u16 *)(l4 + 6);
    }
    /* A UDP checksum of 0 means "none" and must stay 0. */
    if (t.proto == IPPROTO_UDP && *l4sum == 0)
        l4sum = 0;

    if (x.saddr != t.saddr) {
        csum_replace4((__u16 *)(ip + 10), t.saddr, x.saddr);
        if (l4sum)
            csum_replace4(l4sum, t.saddr, x.saddr);
        *(__be32 *)(ip + 12) = x.saddr;
    }
    if (x.daddr != t.daddr) {
        csum_replace4((__u16 *)(ip + 10), t.daddr, x.daddr);
        if (l4sum)
            csum_replace4(l4sum, t.daddr, x.daddr);
        *(__be32 *)(ip + 16) = x.daddr;
    }
    if (x.sport != t.sport) {
        if (l4sum)
            csum_replace2(l4sum, t.sport, x.sport);
        *(__be16 *)l4 = x.sport;
    }
    if (x.dport != t.dport) {
        if (l4sum)
            csum_replace2(l4sum, t.dport, x.dport);
        *(__be16 *)(l4 + 2) = x.dport;
    }
    csum_replace2((__u16 *)(ip + 10), htons((__u16)t.ttl << 8), htons((__u16)(t.ttl - 1) << 8));
    ip[8] = t.ttl - 1;
#pragma unroll
    for (i = 0; i < ETH_ALEN; i++) {
        eth->h_dest[i] = fib.dmac[i];
        eth->h_source[i] = fib.smac[i];
    }
    if (fib.ifindex == ctx->ingress_ifindex) {
        lb4_count(ST_XDP_TX);
        return XDP_TX;
    }
    lb4_count(ST_XDP_REDIRECT);
    return bpf_redirect(fib.ifindex, 0);
}

/* On the veth peers of a node running kpb_lb_xdp: a veth only receives the frames
 * an XDP program sends it (XDP_TX, XDP_REDIRECT) if it runs XDP itself. */
int kpb_xdp_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}
