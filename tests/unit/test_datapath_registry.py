"""Each datapath declares its facts in its class; the registry, features, the runner's
points and the result reader take them from there (no root)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import results as R
from bench.cluster.netns_exec import netns_argv
from bench.datapaths import (
    CLASSES,
    DATAPATH_NAMES,
    VARIANTS,
    family,
    make_datapath,
    make_variant,
)
from bench.datapaths import kube_proxy as K
from bench.datapaths import userspace as U
from bench.datapaths.base import Datapath
from bench.errors import ApplyError, InputError
from bench.kernel import features as F
from bench.measure.runner import Runner
from bench.measure.scenario import parse_scenario
from bench.paths import CHECKOUT
from bench.results.environment import commit_label


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_datapath_class_declares_its_own_name_and_variants(cls: type[Datapath]) -> None:
    # Not inherited: xdp and socket-lb are ebpf-tc subclasses with facts of their own.
    assert "name" in vars(cls) and "variants" in vars(cls)
    for variant, needs in cls.variants.items():
        # Only the rules-free reference (direct) needs nothing beyond the run's namespaces.
        assert bool(needs) != bool(cls.without_rules), f"{variant} needs no kernel feature?"
        assert set(needs) <= {*F.NETNS_CHECKS, *F.HOST_CHECKS}, variant
        dp = make_variant(variant)
        assert type(dp) is cls and dp.variant == variant
        assert family(variant) == cls.name
        assert F.DATAPATH_NEEDS[variant] == needs


def test_the_variant_list_and_names_come_from_the_classes() -> None:
    assert VARIANTS == ("direct", "iptables-legacy", "iptables-nft", "nftables",
                        "nftables-chunked", "ipvs", "ebpf-tc", "xdp", "socket-lb", "userspace")
    assert DATAPATH_NAMES == ("direct", "iptables", "nftables", "ipvs", "ebpf-tc", "xdp",
                              "socket-lb", "userspace")
    assert set(F.DATAPATH_NEEDS) == set(VARIANTS)


def test_a_family_is_its_real_name_not_the_variants_first_word() -> None:
    assert [family(v) for v in VARIANTS] == ["direct", "iptables", "iptables", "nftables",
                                             "nftables", "ipvs", "ebpf-tc", "xdp", "socket-lb",
                                             "userspace"]
    with pytest.raises(InputError, match="unknown datapath 'ebpf'"):
        family("ebpf")


def test_the_runner_records_the_family(tmp_path: Path) -> None:
    doc = {"name": "fam", "sweep": {"datapaths": ["socket-lb", "ebpf-tc"], "services": [1]},
           "traffic": {"workloads": ["udp-new"], "packets": 100}}
    runner = Runner(parse_scenario(doc, "<test>", json.dumps(doc)), tmp_path)
    assert runner.loop.point("socket-lb", 1, "udp-new")["datapath"] == "socket-lb"
    assert runner.loop.point("ebpf-tc", 1, "udp-new")["datapath"] == "ebpf-tc"


def test_older_results_read_with_the_family_name() -> None:
    """Results of 2026-11-30 (two points of the baseline committed then) recorded "ebpf"
    and "socket"; reading maps them."""
    older = CHECKOUT / "tests/data/good/baseline-v2-ebpf-socket-excerpt.json"
    raw = json.loads(older.read_text())
    assert {p["datapath"] for p in raw["points"]} >= {"ebpf", "socket"}
    read = R.load_result(older)
    assert {(p["datapath"], p["variant"]) for p in read["points"]
            if p["variant"] in ("ebpf-tc", "socket-lb")} == {("ebpf-tc", "ebpf-tc"),
                                                             ("socket-lb", "socket-lb")}
    assert {p["datapath"] for p in read["points"]} <= set(DATAPATH_NAMES)


def test_what_a_datapath_cannot_measure_is_declared_with_why() -> None:
    assert set(make_variant("xdp").not_measured) == {"clusterip", "sockets-clusterip"}
    assert set(make_variant("socket-lb").not_measured) == {"clusterip", "nodeport",
                                                          "sockets-nodeport"}
    assert all(make_variant(v).not_measured == {} for v in
               ("iptables-legacy", "nftables", "ipvs", "ebpf-tc", "userspace"))
    assert all(why for v in VARIANTS for why in make_variant(v).not_measured.values())


def test_direct_programs_nothing_and_its_points_say_so(tmp_path: Path) -> None:
    dp = make_variant("direct")
    assert dp.render([], None) == "" and dp.without_rules  # type: ignore[arg-type]
    assert set(dp.not_measured) == {"clusterip", "nodeport", "sockets-nodeport"}
    assert all(make_variant(v).without_rules is None for v in VARIANTS if v != "direct")
    doc = {"name": "ref", "sweep": {"datapaths": ["direct", "nftables"], "services": [1]},
           "traffic": {"workloads": ["tcp-crr"], "flows": [1]}}
    runner = Runner(parse_scenario(doc, "<test>", json.dumps(doc)), tmp_path)
    # Its sync programs nothing: no figure, "not applicable" with the reason, even when a
    # (zero) time was passed in.
    point = runner.loop.point("direct", 1, "tcp-crr x1", sync_seconds=0.0,
                              sync_node_seconds=[0.0, 0.0])
    assert point["setup"]["sync_seconds"] is None and point["setup"]["sync_node_seconds"] == []
    assert point["missing"]["sync_seconds"].startswith("not applicable: direct programs no")
    other = runner.loop.point("nftables", 1, "tcp-crr x1", sync_seconds=0.5)
    assert other["setup"]["sync_seconds"] == 0.5 and "sync_seconds" not in other["missing"]


@pytest.mark.parametrize("kind", ["sync", "disruption"])
def test_a_rules_changing_scenario_rejects_direct(kind: str) -> None:
    doc = {"name": "x", "kind": kind, "sweep": {"datapaths": ["direct"], "services": [1]}}
    with pytest.raises(InputError, match="direct programs no Service rules.*remove it"):
        parse_scenario(doc, "<test>", json.dumps(doc))


def test_the_one_off_load_cost_is_the_bpf_load_time() -> None:
    dp = make_variant("xdp")
    assert dp.one_off_seconds() == 0.0
    dp.load_seconds.update({"a": 1.25, "b": 0.5})  # type: ignore[attr-defined]
    assert dp.one_off_seconds() == 1.75
    assert make_variant("nftables").one_off_seconds() == 0.0


def test_datapath_names_as_the_cli_takes_them() -> None:
    assert make_datapath("ipvs-sh").variant == "ipvs-sh"
    assert make_datapath("iptables", "nft").variant == "iptables-nft"
    with pytest.raises(InputError, match="unknown iptables backend 'xt'; choose one of "
                                         "legacy, nft"):
        make_datapath("iptables", "xt")
    with pytest.raises(InputError, match="unknown datapath 'ipfw'"):
        make_datapath("ipfw")


# --- kube-proxy's shared vocabulary ------------------------------------------------------

def test_the_masquerade_mark_in_both_spellings() -> None:
    assert K.hex_mark(14) == "0x4000"
    assert K.go_mark(14) == "0x00004000"
    assert K.masquerade_rules("0x4000", random_fully=False)[-1] == (
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000")


def _recording(monkeypatch: pytest.MonkeyPatch, rc: int = 0) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def run(netns: str, argv: list[str], stdin: str | None = None,
            timeout: float | None = None, check: bool = True) -> Any:
        calls.append({"netns": netns, "argv": list(argv), "stdin": stdin, "timeout": timeout})
        if check and rc:
            raise ApplyError(f"{argv[0]} failed")
        return subprocess.CompletedProcess(argv, rc, "saved\n", "")

    monkeypatch.setattr(K, "run_in_netns", run)
    return calls


def test_iptables_tools_run_with_kube_proxys_wait_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording(monkeypatch)
    tools = K.IptablesTools("nft")
    tools.run("ns", "-t", "nat", "-I", "X")
    tools.restore("ns", "*nat\nCOMMIT\n", "--noflush", timeout=7.0)
    assert tools.save("ns", "nat") == "saved\n"
    assert [c["argv"] for c in calls] == [
        ["iptables-nft", "-w", "5", "-W", "100000", "-t", "nat", "-I", "X"],
        ["iptables-nft-restore", "-w", "5", "-W", "100000", "--noflush"],
        ["iptables-nft-save", "-t", "nat"]]
    assert calls[1]["stdin"] == "*nat\nCOMMIT\n" and calls[1]["timeout"] == 7.0
    with pytest.raises(InputError, match="--iptables-backend|choose one of"):
        K.IptablesTools("xtables")


def test_the_userspace_mode_keeps_its_own_older_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording(monkeypatch)
    U.TOOLS.run("ns", "-t", "nat", "-N", "X")
    U.TOOLS.restore("ns", "*nat\nCOMMIT\n", "--noflush")
    assert [c["argv"] for c in calls] == [["iptables-legacy", "-w", "-t", "nat", "-N", "X"],
                                          ["iptables-legacy-restore", "--noflush"]]


@pytest.mark.parametrize(("rc", "ok"), [(0, True), (1, True), (2, False)])
def test_ensure_chain_accepts_an_existing_chain_only(monkeypatch: pytest.MonkeyPatch, rc: int,
                                                     ok: bool) -> None:
    _recording(monkeypatch, rc)
    if ok:
        K.IptablesTools().ensure_chain("ns", "nat", "KUBE-SERVICES")
    else:
        with pytest.raises(ApplyError, match=r"-t nat -N KUBE-SERVICES failed in ns \(exit 2\)"):
            K.IptablesTools().ensure_chain("ns", "nat", "KUBE-SERVICES")


# --- one way into a namespace, one commit label ------------------------------------------

def test_a_command_never_runs_outside_a_named_namespace() -> None:
    assert netns_argv("kpb1-n0", ["nft", "-f", "-"]) == ["ip", "netns", "exec", "kpb1-n0",
                                                         "nft", "-f", "-"]
    with pytest.raises(ValueError, match="refusing to run nft outside"):
        netns_argv("", ["nft"])


def test_one_commit_label() -> None:
    assert commit_label({"git_commit": "0123456789abcdef", "git_dirty": True}) == (
        "0123456789ab-dirty")
    assert commit_label({"git_commit": "0123456789abcdef", "git_dirty": False}) == (
        "0123456789ab")
    assert commit_label({"git_commit": None, "git_dirty": None}) == "nogit"
