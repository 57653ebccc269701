"""A known slowdown on purpose: proof that a regression gate catches one.

``kpbench run --inject-rules N`` loads N rules that never match into the
raw table's PREROUTING chain of every node (iptables-legacy, inside the
run's own node namespaces). Every packet that enters a node's netfilter walks
them before any datapath rule: with the netfilter datapaths (iptables,
nftables, IPVS, userspace) every packet at every node it crosses. The eBPF
datapaths translate the service before netfilter, but the node stack still
forwards what they pass on (a packet reaching the node of its backend pod),
so they pay too, where it does. Measured with 2000 rules (default suite,
this host), the median change of p50 latency and CPU per packet was +42 %
(userspace, whose proxy's own cost dominates) to +140 % (nftables), and
+60 % (XDP) and +83 % (eBPF at tc).

The number is recorded in the result (``environment.injected_rules``) and
``kpbench compare`` says so, so such a run is never mistaken for a real one.
"""

from __future__ import annotations

from bench.cluster.netns_exec import run_netns
from bench.errors import KpbenchError

#: Never-matching destination: TEST-NET-3 (RFC 5737), outside every address the cluster uses.
_NO_MATCH = "203.0.113.{}/32"


def rules_text(n: int) -> str:
    """``iptables-restore`` input: ``n`` never-matching rules in raw PREROUTING."""
    lines = ["*raw", ":PREROUTING ACCEPT [0:0]"]
    lines += [f"-A PREROUTING -d {_NO_MATCH.format(i % 256)} -p tcp --dport {1 + i // 256} "
              f"-j ACCEPT" for i in range(n)]
    return "\n".join([*lines, "COMMIT", ""])


def inject_rules(node_namespaces: list[str], n: int) -> None:
    """Load :func:`rules_text` into every node namespace (KpbenchError if it cannot)."""
    if n <= 0:
        return
    text = rules_text(n)
    for ns in node_namespaces:
        p = run_netns(ns, ["iptables-legacy-restore"], stdin=text, timeout=60, check=False)
        if p.returncode != 0:
            raise KpbenchError(f"--inject-rules: iptables-legacy-restore failed in {ns}: "
                               f"{(p.stderr or p.stdout).strip()}")
