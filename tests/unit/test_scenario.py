"""Scenario files: the shipped ones load, bad ones get one line naming file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import InputError
from bench.measure.scenario import load_scenario
from tests.conftest import DATA, ROOT

BAD = sorted((DATA / "bad" / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.points


def test_default_scenario_caps_iptables_nft() -> None:
    sc = load_scenario(ROOT / "scenarios" / "default.toml")
    assert sc.scales("iptables-legacy") == [1, 1000, 5000]
    assert sc.scales("iptables-nft") == [1, 1000]
    assert sc.position_index(5000) == 4999


def test_default_scenario_measures_tcp_crr_and_tcp_rr_closed_loop_at_8_flows() -> None:
    # Issue 12's acceptance: the default suite gains both, closed loop, 8 flows.
    sc = load_scenario(ROOT / "scenarios" / "default.toml")
    assert sc.socket_items == (("tcp-crr", 8), ("tcp-rr", 8))
    assert sc.loop == "closed" and sc.rate_tps is None
    assert sc.packet_workloads == ("udp-new", "udp-established", "nodeport-udp-new")


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_bad_scenario_is_one_line_naming_file_and_key(path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(InputError) as exc:
        load_scenario(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert expected in msg, msg


def test_datapaths_selects_part_of_a_scenario_and_says_so(tmp_path: Path) -> None:
    from bench.measure.scenario import select_datapaths
    from bench.results.reader import load_result
    from bench.results.writer import ResultWriter

    sc = load_scenario(ROOT / "scenarios" / "default.toml")
    part = select_datapaths(sc, ["userspace", "ipvs"])
    assert part.datapaths == ("ipvs", "userspace")  # the file's order
    assert part.selected == ("ipvs", "userspace") and sc.selected is None
    assert {dp for dp, _, _ in part.points} == {"ipvs", "userspace"}
    assert part.scales("ipvs") == sc.scales("ipvs")  # same points as a full run
    with pytest.raises(InputError, match="--datapaths: cilium: not in scenario 'default'"):
        select_datapaths(sc, ["cilium"])
    # The result records the choice (its scenario text is the whole file).
    from tests.helpers.synthetic_results import ENV
    assert "selected_datapaths" not in sc.document()
    with ResultWriter(tmp_path / "r.json", scenario=part.document(), environment=dict(ENV)):
        pass
    assert load_result(tmp_path / "r.json")["scenario"]["selected_datapaths"] == [
        "ipvs", "userspace"]


def test_socket_workloads_are_one_point_per_concurrency(tmp_path: Path) -> None:
    from bench.measure.scenario import split_item

    path = tmp_path / "s.toml"
    path.write_text('[sweep]\ndatapaths = ["nftables"]\nservices = [1, 10]\n[traffic]\n'
                    'workloads = ["tcp-crr", "tcp-rr"]\nflows = [8, 1, 8]\nduration_s = 2\n')
    sc = load_scenario(path)
    assert sc.flows == (1, 8) and sc.loop == "closed" and sc.duration_s == 2.0
    assert sc.measured == ("tcp-crr x1", "tcp-crr x8", "tcp-rr x1", "tcp-rr x8")
    assert len(sc.points) == 8
    assert split_item("tcp-crr x8") == ("tcp-crr", 8)
    assert split_item("udp-new") == ("udp-new", None)
    assert sc.packet_workloads == ()


def test_socket_point_ids_and_summary_keep_flows_apart() -> None:
    from bench.results.writer import make_point

    ids = {make_point(datapath="nftables", variant="nftables", services=1, endpoints=4,
                      workload="tcp-rr", rate_pps=None, position="last", position_index=0,
                      socket={"loop": "closed", "flows": f, "rate_tps": None})["id"]
           for f in (1, 8)}
    assert len(ids) == 2
