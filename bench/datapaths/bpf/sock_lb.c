/* sock_lb.c - kpbench's socket load balancer: ClusterIP at connect()/sendmsg(), as
 * Cilium's east-west socket LB does.
 *
 * What: a process in the client pod's cgroup that connects (TCP or UDP) or sends
 *   a datagram to a frontend in lb4_services has the destination of its socket
 *   call rewritten to a backend chosen as kpb_lb_tc would (random slot, or the
 *   ClientIP affinity entry, the client being the socket's network namespace);
 *   every packet then leaves addressed to the backend, so nothing is translated
 *   per packet and no connection is tracked. For an unconnected UDP socket the
 *   chosen backend is remembered per socket (lb4_sock_rev) and recvmsg() shows
 *   the frontend as the source of replies, as the application expects.
 *   A frontend without endpoints fails the call with ECONNREFUSED (kube-proxy's
 *   REJECT; Cilium itself answers EHOSTUNREACH); one whose traffic policy leaves
 *   no endpoint on this node fails with EHOSTUNREACH (kube-proxy drops).
 * Where: cgroup v2 hooks connect4 (kpb_sock_connect4), sendmsg4
 *   (kpb_sock_sendmsg4) and recvmsg4 (kpb_sock_recvmsg4) of the client pod's
 *   run-prefixed cgroup.
 * Limits: IPv4 only; traffic that does not come from a socket in that cgroup
 *   (replayed frames, other pods, the external client) is not load-balanced at
 *   all; getpeername() reports the backend.
 * Cost: per connect() (or unconnected sendmsg()) one frontend lookup, one slot
 *   lookup, one backend lookup; nothing per packet.
 */
#include "lb4.h"

#define KPB_AF_INET 2
#define KPB_SOCK_STREAM 1
#define KPB_SOCK_DGRAM 2
#define KPB_ECONNREFUSED 111
#define KPB_EHOSTUNREACH 113

/* BCC 0.26 declares this helper returning u32; the kernel's cookie is 64 bits. */
#define kpb_socket_cookie(ctx) ((u64(*)(void *))BPF_FUNC_get_socket_cookie)(ctx)

struct sock_rev_key {
    __u64 cookie;
    __be32 address;
    __be16 port;
    __u16 pad;
};

struct sock_rev_val {
    __be32 address;
    __be16 port;
    __u16 rev_nat_index;
};

BPF_TABLE("lru_hash", struct sock_rev_key, struct sock_rev_val, lb4_sock_rev, KPB_CT_MAX);

static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx)
{
    struct lb4_service *svc;
    struct lb4_backend *be;
    __be32 addr = ctx->user_ip4;
    __be16 port = (__be16)ctx->user_port;
    u32 backend_id;
    u8 proto;

    if (ctx->user_family != KPB_AF_INET)
        return 1;
    if (ctx->type == KPB_SOCK_STREAM)
        proto = IPPROTO_TCP;
    else if (ctx->type == KPB_SOCK_DGRAM)
        proto = IPPROTO_UDP;
    else
        return 1;
    svc = lb4_lookup_service(addr, port, proto);
    if (!svc)
        return 1;
    if (svc->count == 0) {
        bpf_set_retval((svc->flags & SVC_F_DROP) ? -KPB_EHOSTUNREACH : -KPB_ECONNREFUSED);
        lb4_count(ST_SOCK_REJECT);
        return 0;
    }
    backend_id = lb4_select_backend(svc, addr, port, proto, bpf_get_netns_cookie(ctx),
                                    bpf_ktime_get_ns());
    be = lb4_backends.lookup(&backend_id);
    if (!be) {
        bpf_set_retval(-KPB_EHOSTUNREACH);
        lb4_count(ST_SOCK_REJECT);
        return 0;
    }
    if (proto == IPPROTO_UDP) {
        struct sock_rev_key key = {};
        struct sock_rev_val val = {};

        key.cookie = kpb_socket_cookie(ctx);
        key.address = be->address;
        key.port = be->port;
        val.address = addr;
        val.port = port;
        val.rev_nat_index = svc->rev_nat_index;
        lb4_sock_rev.update(&key, &val);
    }
    ctx->user_ip4 = be->address;
    ctx->user_port = be->port;
    lb4_count(ST_SOCK_XLATE);
    return 1;
}

int kpb_sock_connect4(struct bpf_sock_addr *ctx)
{
    return sock4_xlate(ctx);
}

int kpb_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
    return sock4_xlate(ctx);
}

/* A reply read with recvfrom()/recvmsg(): show the frontend the datagram went to. */
int kpb_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
    struct sock_rev_key key = {};
    struct sock_rev_val *val;

    key.cookie = kpb_socket_cookie(ctx);
    key.address = ctx->user_ip4;
    key.port = (__be16)ctx->user_port;
    val = lb4_sock_rev.lookup(&key);
    if (val && lb4_reverse_nat.lookup(&val->rev_nat_index)) {
        ctx->user_ip4 = val->address;
        ctx->user_port = val->port;
    }
    return 1;
}
