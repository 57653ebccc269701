"""The Python side of the BPF probes in ``probes/``: one module per program.

- :mod:`~bench.measure.probes.loader`: what every probe shares: kernel facts
  from tracefs, compiling with BCC (and keeping compiled programs for reuse),
  tc attachment in run namespaces, the :class:`~bench.measure.probes.loader.Probe`
  life cycle (attach, start a window, read, detach);
  :mod:`~bench.measure.probes.bcc_output` catches what BCC, clang and the
  verifier print.
- One module per program, named after it: :mod:`~bench.measure.probes.latency`,
  :mod:`~bench.measure.probes.cpu`, :mod:`~bench.measure.probes.drops`,
  :mod:`~bench.measure.probes.transit` (packet measurements),
  :mod:`~bench.measure.probes.kfunc` (kernel-function breakdown, where the
  kernel has kprobes), :mod:`~bench.measure.probes.syscalls` and
  :mod:`~bench.measure.probes.effect` (rule-sync measurements).

A new probe is ``probes/<name>.c`` plus ``bench/measure/probes/<name>.py``
with a :class:`~bench.measure.probes.loader.Probe` subclass whose ``name`` is
``<name>``. This file imports nothing, so a module that only needs
:mod:`~bench.measure.probes.bcc_output` (a datapath compiling its own BPF)
does not load the probes.
"""
