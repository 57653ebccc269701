"""A signal whose raise Python swallows still stops the run (bench.interrupts)."""

from __future__ import annotations

import gc
import os
import signal
import sys
from pathlib import Path

import pytest

from bench import interrupts


class _SignalsWhenCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_swallowed_sigterm_is_raised_again_at_the_next_step(handlers: None) -> None:
    # An exception raised in __del__ is dropped (and reported as "Exception ignored"):
    # the same happens when the signal lands in a fork hook of logging.
    reported = []
    interrupts._quiet_unraisable.default = reported.append  # type: ignore[attr-defined]
    obj = _SignalsWhenCollected()
    del obj
    gc.collect()
    assert reported == []  # our own signal is not reported as an error
    assert isinstance(interrupts.received(), interrupts.Terminated)
    with pytest.raises(interrupts.Terminated):
        interrupts.check()
    interrupts.check()  # once only: the clean-up it sets off may report progress


def test_check_does_not_raise_again_while_the_first_raise_unwinds(handlers: None) -> None:
    with pytest.raises(KeyboardInterrupt):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        finally:
            interrupts.check()  # a progress line printed by a clean-up
    assert interrupts.received() is not None


def test_no_signal_no_raise(handlers: None) -> None:
    interrupts.check()
    assert interrupts.received() is None


def test_a_signal_inside_deferred_waits_for_the_block_to_end(handlers: None) -> None:
    done = []
    with pytest.raises(interrupts.Terminated), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        interrupts.check()  # deferred: not here
        done.append(True)
    assert done == [True]


def test_a_signal_while_the_process_shuts_down_does_not_kill_it(tmp_path: Path) -> None:
    """Python restores the default actions while it shuts down: a SIGTERM then would end
    a finished run as "killed by signal". The CLI ignores signals once its command is over."""
    import subprocess

    script = ("import os, signal, sys\n"
              "from bench import cli\n"
              f"sys.argv = ['kpbench', 'list', {str(tmp_path)!r}]\n"
              "code = cli.main()\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "sys.exit(code)\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_kpbench_starts_exits_cleanly(sig: int, code: int, word: str) -> None:
    """Imports take seconds on a TCG guest: a signal then gets the usual code and a
    one-line message, never an import traceback."""
    import subprocess

    script = ("import os, sys\n"
              "sys.argv = ['kpbench', 'doctor']\n"
              "import bench.cli\n"  # the process entry installs the start-up handlers
              f"os.kill(os.getpid(), {int(sig)})\n"
              "import time; time.sleep(5)\n"
              "sys.exit(0)\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == code, p.stderr
    assert p.stderr.strip() == f"kpbench: {word} while starting; nothing was created"


def test_a_signal_after_the_last_point_says_the_result_is_complete(
        handlers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM while the run releases its probes (after the result was written whole):
    the process stops with 143, and says the result on disk is complete, not partial."""
    from bench import cli
    from bench.measure.scale_loop import ScaleLoop
    from bench.results import environment, reader, writer

    def run_then_signal(self: ScaleLoop) -> Path:
        env = environment.capture_environment()
        with writer.ResultWriter(tmp_path / "r.json", environment=env, scenario={
                "name": self.sc.name, "path": self.sc.path, "text": self.sc.text}) as w:
            self.writer = w
        os.kill(os.getpid(), signal.SIGTERM)  # in the clean-up after the last point
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(ScaleLoop, "run", run_then_signal)
    scenario = Path(__file__).parents[2] / "scenarios" / "smoke.toml"
    code = cli.main(["run", str(scenario), "--results", str(tmp_path), "--no-export"])
    err = capsys.readouterr().err
    assert code == 143
    assert f"{tmp_path / 'r.json'} is complete" in err, err
    assert err.splitlines()[-1].startswith("kpbench: terminated")
    assert reader.load_result(tmp_path / "r.json")["status"] == "complete"


def test_a_signal_while_the_result_file_is_claimed_leaves_no_file(
        handlers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim (an empty file) and its first document are one step: a signal in between
    must not leave an empty, unreadable result behind."""
    from bench.results import environment, writer

    write = writer.write_json_atomic

    def signalled_write(path: Path, doc: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # lands after the claim, before the document
        write(path, doc)

    monkeypatch.setattr(writer, "write_json_atomic", signalled_write)
    with pytest.raises(KeyboardInterrupt):
        writer.ResultWriter(tmp_path / "r.json", environment=environment.capture_environment(),
                             scenario={"name": "s", "path": "s.toml", "text": ""})
    assert list(tmp_path.iterdir()) == []


def test_a_signal_while_a_point_is_written_keeps_the_point_the_file_holds(
        handlers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the atomic rename of a rewrite (during the directory's fsync): the file
    already holds the new point, and the run's last write ("interrupted") must keep it."""
    import json

    from bench import results

    real_fsync = os.fsync
    armed = [False]

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if armed[0] and os.path.isdir(f"/proc/self/fd/{fd}"):  # after the rename
            armed[0] = False
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "fsync", fsync)
    w = results.ResultWriter(tmp_path / "r.json", environment=results.capture_environment(),
                             scenario={"name": "s", "path": "s.toml", "text": ""})
    with pytest.raises(KeyboardInterrupt), w:
        armed[0] = True
        w.add_point(results.make_point(datapath="nftables", variant="nftables", services=1,
                                       endpoints=1, workload="udp-new", rate_pps=1000,
                                       position="last", position_index=0, status="failed",
                                       error="a point"))
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["status"] == "interrupted" and len(doc["points"]) == 1


def test_a_signal_while_the_final_status_is_written_leaves_a_finished_file(
        handlers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM during the last rewrite (the one that marks the run complete): the file
    must say complete (the signal waits for the write), never stay "running"."""
    import json

    from bench import results
    from bench.results import writer

    w = results.ResultWriter(tmp_path / "r.json", environment=results.capture_environment(),
                             scenario={"name": "s", "path": "s.toml", "text": ""})
    write = writer.write_json_atomic

    def signalled_write(path: Path, doc: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # lands before the rename
        write(path, doc)

    monkeypatch.setattr(writer, "write_json_atomic", signalled_write)
    with pytest.raises(interrupts.Terminated), w:
        pass
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "complete"


def test_a_signal_before_the_run_enters_its_result_block_marks_it_interrupted(
        handlers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C between claiming the result file and measuring (while the run logs the
    file's name): the file must end "interrupted", not "running"."""
    import json

    from bench.measure import scale_loop
    from bench.measure.scenario import load_scenario

    def signalled_info(*args: object, **kw: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(scale_loop.log, "info", signalled_info)
    sc = load_scenario(Path(__file__).parents[2] / "scenarios" / "smoke.toml")
    loop = scale_loop.ScaleLoop(sc, tmp_path, step=None)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1, files
    assert json.loads(files[0].read_text())["status"] == "interrupted"


def test_raise_pending_stops_a_deferred_block_between_two_steps(handlers: None) -> None:
    done = []
    with pytest.raises(interrupts.Terminated), interrupts.deferred():
        done.append(1)
        os.kill(os.getpid(), signal.SIGTERM)  # held: a request is in flight
        done.append(2)
        interrupts.raise_pending()  # between two requests: stop here
        done.append(3)
    assert done == [1, 2]
    interrupts.check()  # raised once, not again


def test_raise_pending_without_a_signal_goes_on(handlers: None) -> None:
    with interrupts.deferred():
        interrupts.raise_pending()
    assert interrupts.received() is None


def test_a_signal_while_the_scratch_namespace_is_made_removes_it(
        handlers: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The held signal is raised when the creation block ends, the namespace made: its
    removal must already be armed (CI, 2026-12-01: one was left behind)."""
    from bench.kernel import features
    made, removed = [], []

    def create(name: str) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives while pyroute2 makes it
        made.append(name)

    monkeypatch.setattr(features._netns, "create", create)
    monkeypatch.setattr(features, "register_run", lambda prefix: None)
    monkeypatch.setattr(features, "remove_run", removed.append)
    with pytest.raises(KeyboardInterrupt), features.scratch_netns():
        pytest.fail("the body must not run after the signal")
    assert made and removed and made[0].startswith(removed[0])
