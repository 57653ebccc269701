"""The probe-overhead estimator (bench.measure.overhead.estimate): quietest bursts, paired
spread."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.measure.overhead import estimate


def test_added_cost_is_the_quietest_burst_less_the_quietest_without_probes() -> None:
    # The path costs 3000 ns, the probes 90; other processes' work lands on some bursts.
    noise = [0, 800, 150, 0, 2000]
    samples = {"none": [3000 + n for n in noise],
               "main": [3090 + n for n in reversed(noise)],
               "breakdown": [3900 + n for n in noise]}
    out = estimate(samples)
    assert out["none_ns_per_packet"] == 3000
    assert out["main_ns_per_packet"] == pytest.approx(90)
    assert out["main_pct_of_path"] == pytest.approx(3.0)
    assert out["breakdown_ns_per_packet"] == pytest.approx(900)
    # The paired differences carry the noise: kept as the spread, not as the figure.
    lo, hi = out["main_ns_per_packet_range"]
    assert lo == pytest.approx(90 - 2000) and hi == pytest.approx(90 + 2000)
    assert out["breakdown_ns_per_packet_paired_median"] == pytest.approx(900)
    assert out["samples"]["none"] == [3000 + n for n in noise]


def test_rounds_must_pair() -> None:
    with pytest.raises(ValueError):
        estimate({"none": [1.0, 2.0], "main": [1.0]})


def test_program_figures_add_the_cpu_probes_own_programs_to_the_main_set_only() -> None:
    from bench.measure.overhead import in_window_figures

    # The kernel's run time per packet: the reporter (the cpu probe) 45 ns, latency's
    # two programs 70, the breakdown set 400; the NET_RX estimate beside them is noise.
    # The cpu probe runs in the measured repetitions' cpu passes, not in the breakdown
    # repetition (whose CPU figure is None): its time is the main set's only.
    window = {**estimate({"none": [2000.0, 9000.0], "latency": [9100.0, 2300.0]}),
              "reporter_programs_ns_per_packet": 45.0,
              "latency_programs_ns_per_packet": 70.0,
              "breakdown_programs_ns_per_packet": 400.0}
    assert in_window_figures(window) == {
        "programs_main_ns_per_packet": pytest.approx(115),
        "programs_breakdown_ns_per_packet": pytest.approx(400)}
    # With the part of each set inside the reported figure (its client-egress programs
    # left out), that part too, the cpu probe's own counted whole in the main set's.
    window |= {"latency_programs_in_figure_ns_per_packet": 30.0,
               "breakdown_programs_in_figure_ns_per_packet": 250.0}
    figures = in_window_figures(window)
    assert figures["programs_main_in_figure_ns_per_packet"] == pytest.approx(75)
    assert figures["programs_breakdown_in_figure_ns_per_packet"] == pytest.approx(250)
    # With the cpu probe's own share of its window measured (bench.measure.overhead.
    # cpu_probe_share) and taken out of every cpu pass, what that leaves of it instead
    # (the median share less the quietest burst's, which is taken out; runs before the
    # compensation stored the share itself there).
    window |= {"reporter_in_figure_ns_per_packet": 120.0}
    figures = in_window_figures(window)
    assert figures["programs_main_in_figure_ns_per_packet"] == pytest.approx(150)
    assert figures["programs_breakdown_in_figure_ns_per_packet"] == pytest.approx(250)
    assert figures["programs_main_ns_per_packet"] == pytest.approx(115)  # whole: unchanged
    # With the latency probe measured in sink mode too (as the measured repetitions'
    # cpu passes run it), the main set's part inside the figure is that, not stamping's.
    window |= {"sink_programs_in_figure_ns_per_packet": 4.0}
    figures = in_window_figures(window)
    assert figures["programs_main_in_figure_ns_per_packet"] == pytest.approx(124)
    assert figures["programs_breakdown_in_figure_ns_per_packet"] == pytest.approx(250)
    # No reporter figure (statistics off): nothing to add up, no figure.
    assert in_window_figures({"latency_programs_ns_per_packet": 70.0}) == {}


def test_show_prints_the_probes_programs_share() -> None:
    from bench.present.summary import overhead_line
    from bench.results.summarise import summarise_point
    from bench.results.writer import make_point, make_repetition

    rep = make_repetition(sent=1000, delivered=1000, softirq_ns=1000 * 2_000,
                          cpu_ns_per_packet=2_000.0)
    ov = {"main_ns_per_packet": 400.0, "rounds": 5, "tc_attach": "tcx",
          "programs_main_ns_per_packet": 60.0, "programs_breakdown_ns_per_packet": 170.0,
          "in_window": {"none_ns_per_packet": 2500.0, "rate_pps": 10000, "rounds": 5}}
    p = make_point(datapath="ebpf-tc", variant="ebpf-tc", services=1, endpoints=1,
                   workload="udp-new", rate_pps=10000, position="last", position_index=0,
                   repetitions=[rep], probe_overhead=ov)
    p["summary"] = summarise_point(p)
    assert p["summary"]["probe_overhead_pct"]["programs_main"] == pytest.approx(3.0)
    line = overhead_line({"points": [p]})
    assert line is not None
    assert line.startswith("probe overhead (sender CPU, 5 paired rounds, tc programs as tcx "
                           "links): main +400 ns/packet")
    assert line.splitlines()[1] == (
        "  the probes' programs at 10000 pps (kernel BPF run-time statistics, hooks' "
        "dispatch not included): main 60 ns/packet (3.0 % of cpu/pkt at ebpf-tc udp-new); "
        "breakdown 170 ns/packet (8.5 % of cpu/pkt at ebpf-tc udp-new)")
    p["probe_overhead"]["programs_main_in_figure_ns_per_packet"] = 40.0
    p["summary"] = summarise_point(p)
    assert p["summary"]["probe_overhead_pct"]["programs_main_in_figure"] == pytest.approx(2.0)
    line = overhead_line({"points": [p]})
    assert line is not None and line.splitlines()[1].split(": ", 1)[1].startswith(
        "main 60 ns/packet, 40 inside the reported CPU figure (2.0 % of cpu/pkt at ebpf-tc "
        "udp-new); breakdown 170 ns/packet (8.5 %")
    ov2 = {"main_ns_per_packet": 400.0, "in_window": {"error": "cpu probe: no NET_RX"}}
    p2 = make_point(datapath="ebpf-tc", variant="ebpf-tc", services=1, endpoints=1,
                    workload="udp-new", rate_pps=10000, position="last", position_index=0,
                    repetitions=[rep], probe_overhead=ov2)
    assert overhead_line({"points": [p2]}).endswith(  # type: ignore[union-attr]
        "the probes' programs at the scenario's rate: not measured (cpu probe: no NET_RX)")


def test_the_kernel_s_program_statistics_are_read_from_fdinfo(tmp_path: Path) -> None:
    """A file that is no BPF program shows no run_time_ns: said, not read as zero."""
    from bench.errors import FeatureMissing
    from bench.kernel import bpf_stats

    with open(tmp_path / "f", "w") as f, pytest.raises(FeatureMissing, match="run_time_ns"):
        bpf_stats.run_time(f.fileno())


def test_the_tc_attach_mode_can_be_forced_and_a_bad_value_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.errors import KpbenchError
    from bench.measure.probes import loader

    monkeypatch.setattr(loader, "_tc_mode", None)
    monkeypatch.setenv(loader.TC_MODE_ENV, "clsact")
    assert loader.tc_mode() == "clsact"  # forced: no kernel probe, no namespace needed
    monkeypatch.setattr(loader, "_tc_mode", None)
    monkeypatch.setenv(loader.TC_MODE_ENV, "xdp")
    with pytest.raises(KpbenchError, match="^KPBENCH_PROBE_TC=xdp: .*tcx or clsact"):
        loader.tc_mode()
    monkeypatch.delenv(loader.TC_MODE_ENV)
    assert loader.tc_mode() is None  # not decided: no namespace to find out in


def _in_window_with_fake_bursts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                own_cost: Callable[..., float],
                                burst: Callable[..., object], rounds: int) -> dict:  # type: ignore[type-arg]
    """measure_in_window of one set ``set`` with no kernel: the statistics' cost sampled from
    ``own_cost``, every burst's figures from ``burst`` (net_rx_ns_per_packet's place)."""
    import contextlib

    from bench.measure import overhead as O

    monkeypatch.setattr(O.bpf_stats, "own_cost_ns", own_cost)
    monkeypatch.setattr(O.bpf_stats, "enabled", contextlib.nullcontext)

    class Reporter:
        def __enter__(self) -> Reporter:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def prog_fds(self) -> list[int]:
            return []

    monkeypatch.setattr(O, "CpuProbe", Reporter)
    monkeypatch.setattr(O, "net_rx_ns_per_packet", burst)

    class FakeTarget:
        def build_pcap(self, *a: object, **k: object) -> Path:
            return tmp_path / "x.pcap"

    return O.measure_in_window(None, FakeTarget(), tmp_path, 10_000,  # type: ignore[arg-type]
                               {"set": lambda: []}, rounds=rounds,
                               share={"left_ns_per_packet": 1, "taken_ns_per_packet": 2,
                                      "bound_ns_per_packet": 3})


def test_the_statistics_own_cost_is_the_least_of_a_sample_at_every_burst(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """measure_in_window takes out of every program run the statistics' own cost, a
    constant of the machine that only ever reads higher: sampled at every burst, the
    least. One sample taken at a slow moment (here the first, 70 ns against 47) would
    take 23 ns too much out of each run and put the set below what its programs cost."""
    costs = iter([70.0] + [47.0, 48.5, 52.0] * 20)

    def burst(cluster, target, pcap, rate, packets, reporter, groups):
        # Every set's programs: 10 runs a packet of 20 ns each, as the kernel records them
        # with its statistics' 47 ns a run added; 2 of those runs at the client's egress.
        return 3000.0, {"reporter": (2 * (30 + 47.0), 2.0), "set": (10 * (20 + 47.0), 10.0),
                        "outside": (2 * (20 + 47.0), 2.0)}

    out = _in_window_with_fake_bursts(monkeypatch, tmp_path, lambda **_: next(costs), burst,
                                      rounds=3)
    assert out["stats_ns_per_run"] == 47.0
    assert len(out["stats_ns_per_run_samples"]) == 7  # the warm-up and 2 sets x 3 rounds
    assert out["set_programs_ns_per_packet"] == pytest.approx(200)
    assert out["set_programs_in_figure_ns_per_packet"] == pytest.approx(160)
    assert out["reporter_programs_ns_per_packet"] == pytest.approx(60)


def test_a_set_s_program_figure_is_its_quietest_round(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What else runs beside a burst only slows the programs in it: the quietest of the
    rounds is the figure (medians kept apart). Here three rounds of five are slowed,
    as the breakdown set's rounds were at a default run's first point (214-821 ns)."""
    # The warm-up, then each round's two bursts (none and the set) slowed alike: three
    # of five rounds slowed, so the median is too.
    slowdown = iter([1.0] + [1.0, 1.0, 3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 1.5, 1.5])

    def burst(cluster, target, pcap, rate, packets, reporter, groups):
        k = next(slowdown)
        # 10 runs of 20 ns a packet, 2 of them at the client's egress, slowed by k.
        return 3000.0 * k, {"reporter": (2 * (30 * k + 40), 2.0),
                            "set": (10 * (20 * k + 40), 10.0),
                            "outside": (2 * (20 * k + 40), 2.0)}

    out = _in_window_with_fake_bursts(monkeypatch, tmp_path, lambda **_: 40.0, burst, rounds=5)
    assert out["set_programs_ns_per_packet"] == pytest.approx(200)  # the unslowed rounds
    assert out["set_programs_in_figure_ns_per_packet"] == pytest.approx(160)
    assert out["set_programs_outside_ns_per_packet"] == pytest.approx(40)
    assert out["set_programs_ns_per_packet_median"] == pytest.approx(300)
    assert out["reporter_programs_ns_per_packet"] == pytest.approx(60)
    assert max(out["programs"]["set"]) == pytest.approx(600)  # the rounds as measured


def test_the_quiet_gate_waits_for_an_idle_window_and_gives_up_in_bounded_time() -> None:
    from bench.measure.quiet import cpu_times, wait_quiet

    stat = ("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
            "intr 1 2 3\n")
    assert cpu_times(stat) == (150, 1000)  # idle and iowait are not busy; steal would be
    with pytest.raises(ValueError, match="aggregate cpu"):
        cpu_times("cpu0 1 2 3 4 5 6 7 8\n")

    def fake(windows: list[float]):  # busy fraction of each successive window
        clock = [0.0]
        reads = []
        for busy in windows:
            reads += [(0, 0), (int(1000 * busy), 1000)]
        it = iter(reads)

        def sleep(s: float) -> None:
            clock[0] += s
        return (lambda: next(it)), sleep, (lambda: clock[0])

    read, sleep, clock = fake([0.9, 0.5, 0.05])
    got = wait_quiet(read=read, sleep=sleep, clock=clock)
    assert got == {"quiet": True, "waited_s": 3.0, "busy_pct": 5.0}
    read, sleep, clock = fake([0.8] * 100)
    got = wait_quiet(timeout_s=5, read=read, sleep=sleep, clock=clock)
    assert got == {"quiet": False, "waited_s": 5.0, "busy_pct": 80.0}
    # The runner's progress line says when it gave up and measured anyway.
    from bench.measure.runner import _not_quiet

    assert _not_quiet({"quiet": True, "waited_s": 1.0, "busy_pct": 2.0}) == ""
    assert "80.0 % busy for 5.0 s: measured anyway" in _not_quiet(got)
