/* lb4.h - maps and load-balancing decisions shared by kpbench's eBPF datapaths.
 *
 * The model is Cilium's kube-proxy replacement (bpf/lib/lb.h), written anew:
 *
 *   lb4_services   hash  (frontend address, port, protocol, slot) -> service.
 *                  Slot 0 holds the frontend itself: backend count, reverse-NAT
 *                  index, flags, affinity timeout. Slots 1..count hold backend ids.
 *   lb4_backends   hash  backend id -> (address, port, protocol).
 *   lb4_reverse_nat hash reverse-NAT index -> frontend (address, port): what a
 *                  reply's source is rewritten to.
 *   lb4_affinity   LRU   (client, reverse-NAT index) -> (backend id, last use):
 *                  sessionAffinity: ClientIP.
 *   lb4_affinity_match hash (backend id, reverse-NAT index): the backends an
 *                  affinity entry may still point to (a backend that left the
 *                  service, e.g. by readiness, is not reused).
 *   lb4_ct         LRU   connection tracking, one entry per direction.
 *   lb4_stats      per-CPU counters of what the programs did.
 *
 * Userspace (bench/datapaths/ebpf_maps.py) programs the first five from a
 * sync; the others are runtime state. Map sizes come from -D flags the loader
 * computes from the rendering.
 *
 * Only UAPI types are used (the kernel headers BCC compiles against need not
 * match the running kernel). IPv4 only.
 */
#ifndef KPB_LB4_H
#define KPB_LB4_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>

#ifndef KPB_SVC_MAX
#define KPB_SVC_MAX 65536
#endif
#ifndef KPB_BACKEND_MAX
#define KPB_BACKEND_MAX 65536
#endif
#ifndef KPB_REVNAT_MAX
#define KPB_REVNAT_MAX 65536
#endif
#ifndef KPB_AFFINITY_MAX
#define KPB_AFFINITY_MAX 65536
#endif
#ifndef KPB_MATCH_MAX
#define KPB_MATCH_MAX 65536
#endif
#ifndef KPB_CT_MAX
#define KPB_CT_MAX 262144
#endif

/* lb4_service.flags */
#define SVC_F_AFFINITY 0x1 /* sessionAffinity: ClientIP */
#define SVC_F_SNAT 0x2     /* rewrite the client to the frontend address (NodePort, eTP Cluster) */
#define SVC_F_DROP 0x4     /* no backend here but the service has some: drop, do not reject */
#define SVC_F_NODEPORT 0x8 /* a NodePort frontend (the XDP program handles only these) */

/* Connection-tracking lifetimes, as Cilium's defaults. */
#define NSEC 1000000000ULL
#define CT_LIFETIME_TCP (21600 * NSEC)
#define CT_LIFETIME_SYN (60 * NSEC)
#define CT_LIFETIME_NONTCP (60 * NSEC)
#define CT_CLOSE_TIMEOUT (10 * NSEC)
/* An entry's expiry is refreshed at most this often: fewer writes to shared lines. */
#define CT_REFRESH_NS NSEC

#define CT_FWD 0
#define CT_REV 1
#define CT_F_SNAT 0x1
#define CT_F_CLOSING 0x2
#define CT_F_NODEPORT 0x4 /* a NodePort connection: the XDP program may handle it */

#define TCP_F_FIN 0x01
#define TCP_F_SYN 0x02
#define TCP_F_RST 0x04
#define TCP_F_ACK 0x10

/* SNAT ports tried after the client's own one is taken. */
#define SNAT_TRIES 8
#define SNAT_PORT_MIN 1024

struct lb4_key {
    __be32 address;
    __be16 dport;
    __u16 slot;
    __u8 proto;
    __u8 pad[3];
};

struct lb4_service {
    __u32 backend_id;       /* slot > 0 */
    __u32 affinity_timeout; /* slot 0, seconds */
    __u16 count;            /* slot 0 */
    __u16 rev_nat_index;    /* slot 0 */
    __u8 flags;             /* slot 0 */
    __u8 pad[3];
};

struct lb4_backend {
    __be32 address;
    __be16 port;
    __u8 proto;
    __u8 pad;
};

struct lb4_reverse_nat {
    __be32 address;
    __be16 port;
    __u16 pad;
};

struct lb4_affinity_key {
    __u64 client; /* IPv4 source address, or the netns cookie for socket LB */
    __u16 rev_nat_index;
    __u16 pad[3];
};

struct lb4_affinity_val {
    __u64 last_used_ns;
    __u32 backend_id;
    __u32 pad;
};

struct lb4_affinity_match {
    __u32 backend_id;
    __u16 rev_nat_index;
    __u16 pad;
};

struct ct_key {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 dir;
    __u16 pad;
};

/* Forward entry (client -> frontend): rewrite the destination to nat_addr:nat_port
 * (the backend) and, with CT_F_SNAT, the source to snat_addr:snat_port.
 * Reverse entry (backend -> client as the backend sees it): rewrite the source to
 * the reverse-NAT frontend and, with CT_F_SNAT, the destination to
 * nat_addr:nat_port (the original client). */
struct ct_entry {
    __u64 expires_ns;
    __u32 backend_id;
    __be32 nat_addr;
    __be32 snat_addr;
    __be16 nat_port;
    __be16 snat_port;
    __u16 rev_nat_index;
    __u8 flags;
    __u8 pad;
};

/* lb4_stats indexes: what userspace reads back (see ebpf_maps.STATS). */
enum {
    ST_XDP_SEEN,        /* IPv4 TCP/UDP packets the XDP program parsed */
    ST_XDP_TX,          /* translated and sent back out the same interface */
    ST_XDP_REDIRECT,    /* translated and redirected to another interface */
    ST_XDP_PASS_SLOW,   /* for a service, but left to tc (no neighbour, no route) */
    ST_XDP_DROP,        /* dropped (eTP Local without a local endpoint, bad backend) */
    ST_TC_SEEN,
    ST_TC_XLATE,        /* translated and redirected */
    ST_TC_XLATE_STACK,  /* translated and handed to the stack (no FIB answer) */
    ST_TC_REJECT,       /* ICMP port unreachable sent for a service without endpoints */
    ST_TC_DROP,
    ST_SOCK_XLATE,      /* connect()/sendmsg() destinations rewritten */
    ST_SOCK_REJECT,     /* connect()/sendmsg() refused: service without endpoints */
    ST_CT_NEW,          /* connections created (backend selected) */
    ST_AFFINITY_HIT,    /* backend taken from the affinity map */
    ST_N,
};

BPF_TABLE("hash", struct lb4_key, struct lb4_service, lb4_services, KPB_SVC_MAX);
BPF_TABLE("hash", u32, struct lb4_backend, lb4_backends, KPB_BACKEND_MAX);
BPF_TABLE("hash", u16, struct lb4_reverse_nat, lb4_reverse_nat, KPB_REVNAT_MAX);
BPF_TABLE("lru_hash", struct lb4_affinity_key, struct lb4_affinity_val, lb4_affinity,
          KPB_AFFINITY_MAX);
BPF_TABLE("hash", struct lb4_affinity_match, u8, lb4_affinity_match, KPB_MATCH_MAX);
BPF_TABLE("lru_hash", struct ct_key, struct ct_entry, lb4_ct, KPB_CT_MAX);
BPF_PERCPU_ARRAY(lb4_stats, u64, ST_N);

static __always_inline void lb4_count(u32 which)
{
    u64 *c = lb4_stats.lookup(&which);
    if (c)
        (*c)++;
}

static __always_inline struct lb4_service *lb4_lookup_service(__be32 addr, __be16 port, u8 proto)
{
    struct lb4_key key = {};

    key.address = addr;
    key.dport = port;
    key.proto = proto;
    return lb4_services.lookup(&key);
}

/* Random slot among 1..count, as Cilium's LB_SELECTION_RANDOM. */
static __always_inline u32 lb4_random_backend(struct lb4_service *svc, __be32 addr, __be16 port,
                                              u8 proto)
{
    struct lb4_key key = {};
    struct lb4_service *slot;

    key.address = addr;
    key.dport = port;
    key.proto = proto;
    key.slot = (bpf_get_prandom_u32() % svc->count) + 1;
    slot = lb4_services.lookup(&key);
    return slot ? slot->backend_id : 0;
}

/* The backend for a new connection of ``client`` to this frontend: the affinity
 * entry if it is fresh and its backend still serves the service, else a random
 * slot (remembered when the service has affinity). 0: none. */
static __always_inline u32 lb4_select_backend(struct lb4_service *svc, __be32 addr, __be16 port,
                                              u8 proto, u64 client, u64 now)
{
    struct lb4_affinity_key akey = {};
    struct lb4_affinity_val *aval, nval = {};
    struct lb4_affinity_match match = {};
    u32 backend_id;

    if (!(svc->flags & SVC_F_AFFINITY))
        return lb4_random_backend(svc, addr, port, proto);
    akey.client = client;
    akey.rev_nat_index = svc->rev_nat_index;
    aval = lb4_affinity.lookup(&akey);
    /* Another CPU may have renewed the entry with a later "now" than this packet's:
     * last_used_ns > now is fresh, not a u64 wrap-around taken for an expired entry
     * (which sent a concurrent connection to a new random backend). */
    if (aval && (aval->last_used_ns >= now ||
                 now - aval->last_used_ns <= (u64)svc->affinity_timeout * NSEC)) {
        match.backend_id = aval->backend_id;
        match.rev_nat_index = svc->rev_nat_index;
        if (lb4_affinity_match.lookup(&match)) {
            /* Each new connection renews the timeout, as iptables' "recent --set". */
            aval->last_used_ns = now;
            lb4_count(ST_AFFINITY_HIT);
            return aval->backend_id;
        }
    }
    backend_id = lb4_random_backend(svc, addr, port, proto);
    if (backend_id) {
        nval.last_used_ns = now;
        nval.backend_id = backend_id;
        lb4_affinity.update(&akey, &nval);
    }
    return backend_id;
}

#endif /* KPB_LB4_H */
