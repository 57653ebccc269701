/* syscalls.c - kernel time inside the system calls of chosen processes.
 *
 * Measures: for every thread whose id userspace put in `pids` (a single-threaded
 *   tool's pid, or the harness's own applying thread), the time
 *   between raw_syscalls:sys_enter and raw_syscalls:sys_exit of each system
 *   call, summed and counted per syscall number. Used to split a datapath
 *   apply into "the tool in user space" and "the kernel": the nft and
 *   iptables-nft commit happens inside sendmsg() on a netlink socket,
 *   iptables-legacy's inside setsockopt(IPT_SO_SET_REPLACE).
 * Attaches: tracepoints raw_syscalls:sys_enter and raw_syscalls:sys_exit
 *   (args read from the tracepoint record, no kernel struct).
 * Overhead: every system call on the machine takes one hash lookup at entry
 *   and exit (a few tens of ns); only the watched processes do more. Attach
 *   it only around an apply.
 * Limits: a process is watched from the moment its tgid is added, so the
 *   first system calls of a tool (exec, dynamic loading) may be missed; the
 *   commit calls come much later. Time a call spends blocked (sleeping) is
 *   counted too: it is time the apply waited on the kernel.
 */
#include <uapi/linux/ptrace.h>

#define KPB_MAX_SYSCALLS 512

struct stat_t {
    u64 ns;
    u64 calls;
};

BPF_HASH(pids, u32, u8, 64);               /* thread ids to watch (a tool's pid is its
                                              main thread's id) */
BPF_HASH(entered, u32, u64, 1024);         /* tid -> entry time */
BPF_ARRAY(stats, struct stat_t, KPB_MAX_SYSCALLS);

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!pids.lookup(&tid))
        return 0;
    u64 now = bpf_ktime_get_ns();
    entered.update(&tid, &now);
    return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!pids.lookup(&tid))
        return 0;
    u64 *start = entered.lookup(&tid);
    if (!start)
        return 0;
    u64 delta = bpf_ktime_get_ns() - *start;
    entered.delete(&tid);
    u32 nr = (u32)args->id;
    if (nr >= KPB_MAX_SYSCALLS)
        return 0;
    struct stat_t *s = stats.lookup(&nr);
    if (s) {
        __sync_fetch_and_add(&s->ns, delta);
        __sync_fetch_and_add(&s->calls, 1);
    }
    return 0;
}
