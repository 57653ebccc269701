"""``kpbench compare BASE NEW``: which metrics changed significantly between two runs.

BASE and NEW are result files, or directories (the newest run of each
scenario under them, paired by scenario name). For every point present in
both (matched by variant, workload, services, endpoints, rate and position;
a socket point also by its flows, loop and offered rate)
and every metric both measured, it prints the base and new figures, the
change, the Mann-Whitney U p-value over the repetitions and a verdict:
REGRESSION / improvement (p < alpha and the change is at least the minimum
effect, in the metric's bad / good direction), same, or untested (too few
repetitions for the test to ever reach p < alpha — e.g. one sync time per
point). Points present or measured on one side only are listed.

When BASE (or NEW) is a baseline pooled from several runs (kpbench
baseline), a change must also stand out from the spread between whole runs:
a t test of the per-run figures (moderated over the points of each metric),
Benjamini-Hochberg corrected over every metric. Runs of the same code differ
by more than the repetitions inside a run; a change within that drift is
"same (run drift)". A figure measured once per run (a packet scenario's full
sync) is then tested across runs. To catch changes of tens of percent on a
noisy machine, pool several NEW runs too (kpbench baseline NEW1 NEW2 ... -o
new.json) and compare that: see the README for the measured sensitivity.

Results from different environments (kernel, host or VM, VM acceleration,
CPU, iptables/nft versions) are refused with the differing keys, unless
--allow-env-mismatch.

metrics (lower is better unless said): p50_latency, p99_latency,
p99.9_latency, p50_latency_entry_node and p50_latency_other_node (the packets to a
pod on the node the traffic entered, and on the other node: two paths whose mix the
Service's random choice sets), cpu_ns_per_packet, delivered_pps (higher is
better), loss, sync_full, settle (one figure per datapath and scale that all its
points share: judged once, at the first of them, naming the others); against the
paired control (the same traffic to
the backend pods' own addresses), differences near zero whose change, minimum
effect (--min-effect-ns) and gate are in ns: service_minus_control_p50_ns,
service_minus_control_p50_entry_node_ns, service_minus_control_p50_other_node_ns,
service_minus_control_p99_ns, service_minus_control_cpu_ns_per_packet; of sync
scenarios: sync_full, sync_change, sync_kernel, sync_effect; of socket workloads
(docs/sockets.md):
transactions_per_s (higher is better), throughput_bps (higher
is better), rtt_p50, rtt_p99, rtt_p99.9, cpu_ns_per_transaction,
failed_connections, and against the direct path (in ns, like the control's):
service_minus_direct_rtt_p50_ns, service_minus_direct_rtt_p99_ns,
service_minus_direct_cpu_ns_per_transaction; service_minus_direct_transactions_per_s
(higher is better; its change, minimum effect and gate are in % of BASE's direct
rate); of disruption scenarios (docs/disruption.md): stall_ms, lost,
excess_p99_ns, and of churn sync_cpu_s_per_s

exit status: 0 no gate failed; 1 a --fail-on gate failed (a significant
regression beyond its threshold), or with --fail-on-missing a point measured
in BASE is missing or failed in NEW; 2 bad input or incomparable results.

examples:
  kpbench compare results/baselines/default.json results/<machine>/
  kpbench compare BASE.json NEW.json --fail-on p99_latency:10% --fail-on cpu_ns_per_packet:10%
  kpbench compare BASE.json NEW.json --format markdown --changed-only > comment.md
  kpbench compare BASE.json NEW.json --fail-on p99_latency:10% --junit gate.xml
  kpbench baseline new/*/*_default.json -o /tmp/new.json && \
    kpbench compare results/baselines/default.json /tmp/new.json --fail-on p50_latency:20%
"""

from __future__ import annotations

import argparse
import sys

# bench.analysis.verdict imports neither numpy nor scipy: the parser stays fast.
from bench.analysis.verdict import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT_NS, DEFAULT_MIN_EFFECT_PCT
from bench.commands._common import number_in
from bench.errors import InputError

FORMATS = ("table", "markdown", "json", "csv")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare two runs: significant regressions, CI gate",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE", help="base result file or results directory")
    p.add_argument("new", metavar="NEW", help="new result file or results directory")
    p.add_argument("--fail-on", metavar="METRIC:PCT", action="append", default=[],
                   help="exit 1 if METRIC has a significant regression beyond PCT %% at any "
                        "point (repeatable), e.g. p99_latency:10%%; a difference against the "
                        "paired control takes ns, e.g. service_minus_control_p50_ns:500ns")
    p.add_argument("--fail-on-missing", action="store_true",
                   help="exit 1 if a point measured in BASE is missing or failed in NEW")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="output format (default: table)")
    p.add_argument("--changed-only", action="store_true",
                   help="table/markdown: show only regressions, improvements and metrics "
                        "measured on one side")
    p.add_argument("--alpha", type=number_in(1e-9, 0.5), default=DEFAULT_ALPHA,
                   help=f"significance level of the test (default {DEFAULT_ALPHA:g})")
    p.add_argument("--min-effect", type=number_in(0, 1e6, unit="%"),
                   default=DEFAULT_MIN_EFFECT_PCT, metavar="PCT",
                   help=f"smallest change called a regression or improvement "
                        f"(default {DEFAULT_MIN_EFFECT_PCT:g}%%)")
    p.add_argument("--min-effect-ns", type=number_in(0, 1e9, unit="ns"),
                   default=DEFAULT_MIN_EFFECT_NS, metavar="NS",
                   help=f"the same for a difference against the paired control "
                        f"(service_minus_control_*), which sits near zero: in ns "
                        f"(default {DEFAULT_MIN_EFFECT_NS:g})")
    p.add_argument("--allow-env-mismatch", action="store_true",
                   help="compare results from different environments anyway (with warnings)")
    p.add_argument("--junit", metavar="FILE", default=None,
                   help="also write the gate as JUnit XML: one test case per point and "
                        "--fail-on metric, a regression beyond the gate is a failure")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.analysis.compare import compare_runs, parse_gate
    from bench.present.compare_output import render_machine, render_text
    from bench.results.store import pair_runs, resolve

    gates = [parse_gate(g) for g in args.fail_on]
    if args.junit and not gates and not args.fail_on_missing:
        raise InputError("--junit reports the gates: give at least one --fail-on METRIC:PCT "
                         "(or --fail-on-missing)", source="--junit")
    pairs, notes = pair_runs(resolve(args.base), resolve(args.new))
    if not pairs:
        raise InputError("no scenario is present on both sides: " + "; ".join(notes))
    comparisons = [compare_runs(b.doc, n.doc, base_source=str(b.path), new_source=str(n.path),
                                alpha=args.alpha, min_effect_pct=args.min_effect,
                                min_effect_ns=args.min_effect_ns,
                                allow_env_mismatch=args.allow_env_mismatch)
                   for b, n in pairs]

    problems = [msg for c in comparisons for msg in c.failures(gates, args.fail_on_missing)]
    failed = bool(problems)
    if args.junit:
        from pathlib import Path

        from bench.present.junit import junit_xml

        Path(args.junit).write_text(junit_xml(comparisons, gates, args.fail_on_missing),
                                    encoding="utf-8")

    if args.format in ("json", "csv"):
        sys.stdout.write(render_machine(comparisons, args.format, gates, notes, failed))
        for c in comparisons:
            for w in c.warnings:
                print(f"kpbench: warning: {w}", file=sys.stderr)
    else:
        sys.stdout.write(render_text(comparisons, args.format, args.changed_only, notes))
    sys.stdout.flush()
    for c in comparisons:
        for w in c.gate_warnings(gates):
            print(f"kpbench: warning: {w}", file=sys.stderr)
    for msg in problems:
        print(f"kpbench: {msg}", file=sys.stderr)
    if failed:
        print(f"kpbench: FAILED: {len(problems)} gate failure(s)", file=sys.stderr)
        return 1
    return 0
