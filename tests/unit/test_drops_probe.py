"""The drops probe's configuration checks (no kernel: nothing is attached)."""

import pytest

from bench.measure.probes.drops import DropsProbe
from bench.measure.probes.loader import TcHook


def test_without_machine_wide_counts_the_probe_needs_an_origin() -> None:
    # It would count nothing: no machine-wide counts and no run's skbs to tell apart.
    with pytest.raises(ValueError, match="origin hook"):
        DropsProbe(machine_wide=False)
    probe = DropsProbe(TcHook("<client>"), [TcHook("<backend>")], sink=True, machine_wide=False)
    assert not probe.machine_wide and probe.sink
