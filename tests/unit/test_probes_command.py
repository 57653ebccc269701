"""``kpbench probes``: every BPF program listed, and ``--ebpf`` printing one as the
loader compiles it (no root: the probes whose flags need no tracefs)."""

from __future__ import annotations

import importlib

import pytest

from bench.cli import main
from bench.commands import probes as cmd
from bench.measure.probes.loader import compiled_source
from bench.paths import PROBES_DIR


def test_every_bpf_program_has_its_module_and_command_entry() -> None:
    assert sorted(cmd.NAMES) == sorted(p.stem for p in PROBES_DIR.glob("*.c"))
    factories = cmd.as_a_run_compiles()
    assert sorted(factories) == sorted(cmd.NAMES)
    for name, make in factories.items():
        probe = make()
        assert probe.name == name
        assert type(probe).__module__ == importlib.import_module(
            f"bench.measure.probes.{name}").__name__
        assert cmd.summary(name)  # the header line of probes/<name>.c


def test_ebpf_prints_the_program_with_the_loaders_defines(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probes", "--ebpf", "latency"]) == 0
    out = capsys.readouterr().out
    # A run's latency probe: one replay's worth of slots, identified packets dropped;
    # the probes' own header written in place of its #include line (one whole text).
    header = (PROBES_DIR / "kpb_identity.h").read_text().rstrip("\n")
    source = (PROBES_DIR / "latency.c").read_text()
    assert source.count('#include "kpb_identity.h"\n') == 1
    assert out == ("#define KPB_CAPACITY 2097152\n#define KPB_DROP 1\n"
                   + source.replace('#include "kpb_identity.h"', header))
    assert "#include \"" not in out
    assert main(["probes", "--ebpf", "kfunc"]) == 0
    assert capsys.readouterr().out.startswith("#define KPB_NFUNCS 4\n/*\n * kfunc.c - ")


def test_a_flag_without_value_is_defined_as_one() -> None:
    assert compiled_source("effect", ["-DX", "-DY=2ULL"]).startswith(
        "#define X 1\n#define Y 2ULL\n/* effect.c")
    with pytest.raises(ValueError, match="not a -D flag"):
        compiled_source("effect", ["-I/usr/include"])


def test_an_unknown_probe_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["probes", "--ebpf", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
