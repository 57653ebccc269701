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
