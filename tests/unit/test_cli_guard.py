"""The CLI's last line of defence, and generate/render agreeing on what they write."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bench import cli
from bench.commands import generate as generate_cmd
from bench.errors import InputError
from bench.model.generate import GenSpec, generate, to_k8s
from bench.model.k8s_input import parse_objects


def _crash(args: argparse.Namespace) -> int:
    raise ZeroDivisionError("division by zero in a bug")


def _with_crashing_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = generate_cmd.run
    monkeypatch.setattr(generate_cmd, "run", _crash)
    # set_defaults bound the function when the parser was built: build it anew.
    assert generate_cmd.run is not real


def test_an_unexpected_exception_is_one_line_and_a_traceback_file(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _with_crashing_command(monkeypatch)
    code = cli.main(["generate", "--services", "1"])
    err = capsys.readouterr().err
    assert code == cli.BUG_EXIT != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "internal error (a bug): ZeroDivisionError: division by zero in a bug" in err
    log = Path(re.search(r"traceback in (\S+);", err).group(1))  # type: ignore[union-attr]
    try:
        text = log.read_text()
        assert text.startswith("kpbench generate --services 1\n")
        assert "Traceback" in text and "_crash" in text
    finally:
        log.unlink()


def test_debug_prints_the_traceback(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _with_crashing_command(monkeypatch)
    assert cli.main(["--debug", "generate", "--services", "1"]) == cli.BUG_EXIT
    err = capsys.readouterr().err
    assert "Traceback" in err and "_crash" in err
    assert err.strip().splitlines()[-1].startswith("kpbench: internal error (a bug)")


def test_expected_errors_still_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["generate", "--services", "0"]) == 2
    assert capsys.readouterr().err.startswith("kpbench: error: ")


@pytest.mark.parametrize("timeout", [1, 600, 86400])
def test_generate_writes_only_affinity_render_reads(
        tmp_path: Path, timeout: int, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "svc.yaml"
    assert cli.main(["generate", "--services", "2", "--affinity-timeout", str(timeout),
                     "-o", str(out)]) == 0
    objs = parse_objects(out.read_text(), str(out))
    assert {(s.session_affinity, s.affinity_timeout) for s in objs.services} == {
        ("ClientIP", timeout)}


@pytest.mark.parametrize("timeout", [0, -1, 86401])
def test_generate_refuses_an_affinity_timeout_render_would_refuse(timeout: int) -> None:
    with pytest.raises(InputError, match="affinity timeout"):
        generate(GenSpec(services=1, session_affinity="ClientIP", affinity_timeout=timeout))
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--services", "1", "--affinity-timeout", str(timeout)])
    assert e.value.code == 2


def test_generated_files_round_trip_through_the_reader() -> None:
    services, slices = generate(GenSpec(services=3, session_affinity="ClientIP",
                                        affinity_timeout=5, type="NodePort"))
    import yaml

    objs = parse_objects(yaml.safe_dump(to_k8s(services, slices)))
    assert objs.services == services and objs.slices == slices
