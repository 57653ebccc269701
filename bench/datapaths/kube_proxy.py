"""What kube-proxy's modes share: chain names, the masquerade mark, the iptables tools.

The iptables and IPVS proxiers (``pkg/proxy/iptables``, ``pkg/proxy/ipvs``)
mark packets for masquerading in ``KUBE-MARK-MASQ`` and masquerade them in
``KUBE-POSTROUTING`` with the same rules, accept marked traffic in
``KUBE-FORWARD``, and run ``iptables``/``iptables-restore`` with the same
wait flags; the nftables proxier prints the same mark. The userspace mode
runs the same binaries with its own, older flags. Those shared words are
defined here once; each mode's own chains stay in its module.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.datapaths.base import run_in_netns
from bench.errors import ApplyError, InputError

#: The iptables binary families (``iptables-legacy``, ``iptables-nft``).
IPTABLES_BACKENDS = ("legacy", "nft")
#: kube-proxy's wait flags for both iptables and iptables-restore (>= 1.6.2).
WAIT_FLAGS = ("-w", "5", "-W", "100000")
#: How long an ``iptables -C``/``-N`` whose exit status is the answer may take, in seconds.
CHECK_TIMEOUT_S = 30.0

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"


def check_backend(backend: str) -> str:
    """``backend`` if it is an iptables backend; an InputError naming the choices if not."""
    if backend not in IPTABLES_BACKENDS:
        raise InputError(f"unknown iptables backend {backend!r}; choose one of "
                         f"{', '.join(IPTABLES_BACKENDS)}", field="--iptables-backend")
    return backend


def hex_mark(bit: int) -> str:
    """The masquerade mark of ``--iptables-masquerade-bit`` as upstream's tests write it
    (``0x4000``)."""
    return f"{1 << bit:#x}"


def go_mark(bit: int) -> str:
    """The masquerade mark as kube-proxy formats it (Go ``%#08x``: ``0x00004000``)."""
    return f"0x{1 << bit:08x}"


def masquerade_rules(mark: str, random_fully: bool) -> list[str]:
    """``KUBE-POSTROUTING`` and ``KUBE-MARK-MASQ`` of the iptables and IPVS proxiers."""
    masquerade = (f'-A {KUBE_POSTROUTING} -m comment --comment '
                  '"kubernetes service traffic requiring SNAT" -j MASQUERADE')
    return [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
        # Clear the mark so a packet that re-traverses the stack is not masqueraded twice.
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
        masquerade + (" --random-fully" if random_fully else ""),
        f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}",
    ]


def forward_rules(mark: str) -> list[str]:
    """The ``KUBE-FORWARD`` accept rules of the iptables and IPVS proxiers."""
    return [
        (f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" '
         f"-m mark --mark {mark}/{mark} -j ACCEPT"),
        (f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
         "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
    ]


@dataclass(frozen=True)
class IptablesTools:
    """One backend's ``iptables``, ``-restore`` and ``-save``, run inside a namespace.

    ``wait`` goes to ``iptables``, ``restore_wait`` to ``iptables-restore``:
    kube-proxy's :data:`WAIT_FLAGS` for both unless a mode used others.
    """

    backend: str = "legacy"
    wait: tuple[str, ...] = WAIT_FLAGS
    restore_wait: tuple[str, ...] = WAIT_FLAGS

    def __post_init__(self) -> None:
        check_backend(self.backend)

    def binary(self, suffix: str = "") -> str:
        """``iptables-<backend>``, or its ``-restore``/``-save`` with ``suffix``."""
        return f"iptables-{self.backend}" + (f"-{suffix}" if suffix else "")

    def run(self, netns: str, *args: str, timeout: float | None = None) -> None:
        """``iptables <wait> args`` in ``netns``; ApplyError if it fails."""
        run_in_netns(netns, [self.binary(), *self.wait, *args], timeout=timeout)

    def rc(self, netns: str, *args: str, timeout: float | None = CHECK_TIMEOUT_S) -> int:
        """The exit status of ``iptables <wait> args`` (EnsureRule and EnsureChain need it,
        not an exception)."""
        return run_in_netns(netns, [self.binary(), *self.wait, *args], timeout=timeout,
                            check=False).returncode

    def ensure_chain(self, netns: str, table: str, chain: str,
                     timeout: float | None = CHECK_TIMEOUT_S) -> None:
        """kube-proxy's EnsureChain: create ``chain`` unless it exists."""
        # Exit status 1 is "chain already exists", which EnsureChain accepts.
        rc = self.rc(netns, "-t", table, "-N", chain, timeout=timeout)
        if rc not in (0, 1):
            raise ApplyError(f"{self.binary()} -t {table} -N {chain} failed in {netns} "
                             f"(exit {rc})")

    def restore(self, netns: str, text: str, *flags: str, timeout: float | None = None) -> None:
        """Feed ``text`` to ``iptables-restore <wait> flags`` in ``netns``."""
        run_in_netns(netns, [self.binary("restore"), *self.restore_wait, *flags], stdin=text,
                     timeout=timeout)

    def save(self, netns: str, table: str) -> str:
        """``iptables-save -t table`` in ``netns``."""
        return run_in_netns(netns, [self.binary("save"), "-t", table]).stdout
