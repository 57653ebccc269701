"""The kfunc probe (``probes/kfunc.c``): time per call in netfilter's and IPVS's own functions.

:class:`KfuncProbe` attaches ``probes/kfunc.c`` with kprobes/kretprobes to
the functions of :data:`FUNCTIONS` that the running kernel has, found in
``available_filter_functions`` (so a renamed or inlined function is simply
absent, never assumed). The IPVS entry point has had several names
(``ip_vs_in_hook`` since 5.19ish, ``ip_vs_remote_request4`` before): the
first one present is taken. Kernels without kprobes (this project's
Firecracker host) raise :class:`bench.errors.FeatureMissing`, so the runner
records the breakdown as missing; under ``kpbench vm run`` it is there.

Same life cycle as every probe (:mod:`bench.measure.probes.loader`)::

    with KfuncProbe() as kf:
        kf.start()
        ... traffic ...
        reading = kf.read()          # per function: calls, ns, histogram
        reading.per_packet(delivered)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.errors import FeatureMissing
from bench.measure.probes.loader import TRACEFS_DIRS, Probe, _first_line, compile_probe

# Breakdown name -> candidate kernel symbols, first present wins.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "nf_hook_slow": ("nf_hook_slow",),
    "ipt_do_table": ("ipt_do_table",),
    "nft_do_chain": ("nft_do_chain",),
    "ipvs_hook": ("ip_vs_in_hook", "ip_vs_remote_request4", "ip_vs_in"),
}
MAX_FUNCS = 4  # kpb_enter_<n>/kpb_leave_<n> programs in kfunc.c
HIST_SLOTS = 40


def available_functions() -> set[str]:
    """Kernel functions kprobes may attach to (tracefs ``available_filter_functions``)."""
    for base in TRACEFS_DIRS:
        f = base / "available_filter_functions"
        if f.exists():
            try:
                text = f.read_text()
            except OSError as e:
                raise FeatureMissing(f"kfunc probe: cannot read {f}: {e}") from e
            # Lines are "name" or "name [module]".
            return {line.split()[0] for line in text.splitlines() if line.strip()}
    raise FeatureMissing("kfunc probe: no available_filter_functions in tracefs (kernel "
                         "without ftrace/kprobes; use `kpbench vm run`)")


def resolve(wanted: dict[str, tuple[str, ...]], have: set[str]) -> dict[str, str]:
    """Breakdown name -> the kernel symbol to probe, for the names the kernel has."""
    found = {}
    for name, candidates in wanted.items():
        sym = next((c for c in candidates if c in have), None)
        if sym is not None:
            found[name] = sym
    return found


@dataclass(frozen=True)
class FunctionTime:
    symbol: str
    calls: int
    total_ns: int
    hist: tuple[int, ...]  # calls per log2(ns) slot
    unmatched: int  # returns without an entry (attached mid-call)

    @property
    def mean_ns(self) -> float | None:
        return self.total_ns / self.calls if self.calls else None


@dataclass(frozen=True)
class KfuncReading:
    functions: dict[str, FunctionTime]  # by breakdown name
    seconds: float

    def per_packet(self, delivered: int) -> dict[str, dict[str, float | int | str | None]]:
        """The breakdown a result stores: per function, calls and ns per delivered packet."""
        out: dict[str, dict[str, float | int | str | None]] = {}
        for name, ft in self.functions.items():
            out[name] = {
                "symbol": ft.symbol, "calls": ft.calls, "total_ns": ft.total_ns,
                "mean_ns_per_call": ft.mean_ns,
                "calls_per_packet": ft.calls / delivered if delivered else None,
                "ns_per_packet": ft.total_ns / delivered if delivered else None,
            }
        return out


class KfuncProbe(Probe):
    """Inclusive time per call of nf_hook_slow, ipt_do_table, nft_do_chain and the IPVS hook."""

    name = "kfunc"

    def __init__(self, functions: dict[str, tuple[str, ...]] | None = None) -> None:
        super().__init__()
        self.wanted = dict(functions or FUNCTIONS)
        if len(self.wanted) > MAX_FUNCS:
            raise ValueError(f"at most {MAX_FUNCS} functions per kfunc probe")
        self.symbols: dict[str, str] = {}
        self._index: dict[str, int] = {}

    def cflags(self) -> list[str]:
        return [f"-DKPB_NFUNCS={MAX_FUNCS}"]

    def attach(self) -> None:
        if self.attached:
            return
        if not any(Path(b, "kprobe_events").exists() for b in TRACEFS_DIRS):
            raise FeatureMissing("kfunc probe: kernel without kprobes (CONFIG_KPROBE_EVENTS); "
                                 "use `kpbench vm run`")
        self.symbols = resolve(self.wanted, available_functions())
        if not self.symbols:
            raise FeatureMissing("kfunc probe: none of "
                                 f"{', '.join(s for c in self.wanted.values() for s in c)} "
                                 "is probeable on this kernel")
        self._index = {name: i for i, name in enumerate(self.symbols)}
        self._bpf = compile_probe(self.name, self.cflags())

        def steps() -> None:
            for name, sym in self.symbols.items():
                i = self._index[name]
                try:
                    self._bpf.attach_kprobe(event=sym.encode(), fn_name=f"kpb_enter_{i}".encode())
                    self._bpf.attach_kretprobe(event=sym.encode(),
                                               fn_name=f"kpb_leave_{i}".encode())
                except Exception as e:  # BCC raises bare Exception
                    raise FeatureMissing(f"kfunc probe: cannot attach to {sym}: "
                                         f"{_first_line(e)}") from e

        self._attach_guarded(steps)

    def _zero(self) -> None:
        for table in (b"calls", b"total_ns", b"unmatched", b"hist"):
            self._bpf[table].clear()

    def read(self) -> KfuncReading:
        """Calls and time per function since :meth:`start`."""
        self._require()
        calls, total, unmatched = (self._bpf[t] for t in (b"calls", b"total_ns", b"unmatched"))
        hist: dict[int, list[int]] = {i: [0] * HIST_SLOTS for i in self._index.values()}
        for k, v in self._bpf[b"hist"].items():
            if k.fn in hist and k.slot < HIST_SLOTS:
                hist[k.fn][k.slot] += int(v.value)
        functions = {}
        for name, i in self._index.items():
            functions[name] = FunctionTime(
                symbol=self.symbols[name],
                calls=int(sum(calls.getvalue(calls.Key(i)))),
                total_ns=int(sum(total.getvalue(total.Key(i)))),
                hist=tuple(hist[i]),
                unmatched=int(sum(unmatched.getvalue(unmatched.Key(i)))))
        return KfuncReading(functions, self._window())

