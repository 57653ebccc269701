"""``kpbench compare --junit FILE``: the gate as a JUnit XML report CI systems show natively.

One test case per point and gated metric (each ``--fail-on METRIC:PCT``): it
fails when that metric regressed significantly beyond the gate's threshold
there (exactly what makes ``compare`` exit 1), is skipped when it could not
be tested (too few repetitions), and passes otherwise. With
``--fail-on-missing`` every point BASE measured is a test case too, failing
when NEW lost it. One test suite per compared scenario.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from bench.analysis.compare import Comparison, Gate, MetricChange, Verdict
from bench.analysis.metrics import key_label
from bench.present.compare_output import fmt_effect


def _detail(mc: MetricChange) -> str:
    p = "—" if mc.p_value is None else f"{mc.p_value:.3g}"
    return (f"BASE {mc.base} NEW {mc.new} {mc.metric.unit}: {fmt_effect(mc)}, "
            f"p={p}, n={mc.n_base}/{mc.n_new}, verdict {mc.verdict}"
            + (f" ({mc.note})" if mc.note else ""))


def junit_xml(comparisons: Sequence[Comparison], gates: Sequence[Gate],
              fail_on_missing: bool = False) -> str:
    """The JUnit XML document (``<testsuites>``) of the comparisons under these gates."""
    root = ET.Element("testsuites", name="kpbench compare")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for c in comparisons:
        scenario = c.new["scenario"]["name"]
        suite = ET.SubElement(root, "testsuite", name=f"kpbench compare {scenario}")
        props = ET.SubElement(suite, "properties")
        for name, value in (("base", c.base_source), ("new", c.new_source)):
            ET.SubElement(props, "property", name=name, value=value)
        failed = {(g, id(mc)) for g, mc in c.gate_failures(gates)}
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for gate in gates:
            for mc in (m for m in c.changes if m.metric.name == gate.metric):
                case = ET.SubElement(suite, "testcase", classname=f"kpbench.{scenario}",
                                     name=f"{mc.where}: {gate.metric} within "
                                          f"+{gate.threshold_text}")
                counts["tests"] += 1
                if (gate, id(mc)) in failed:
                    counts["failures"] += 1
                    ET.SubElement(case, "failure", type="regression",
                                  message=f"{gate.metric} {fmt_effect(mc)}: a "
                                          f"significant regression beyond --fail-on "
                                          f"{gate}").text = _detail(mc)
                elif mc.verdict is Verdict.UNTESTED:
                    counts["skipped"] += 1
                    ET.SubElement(case, "skipped", message=f"untested: {_detail(mc)}")
                else:
                    ET.SubElement(case, "system-out").text = _detail(mc)
        if fail_on_missing:
            for p in c.points:
                case = ET.SubElement(suite, "testcase", classname=f"kpbench.{scenario}",
                                     name=f"{key_label(p.key)}: measured")
                counts["tests"] += 1
                if p.lost:
                    counts["failures"] += 1
                    ET.SubElement(case, "failure", type="missing",
                                  message=f"--fail-on-missing: {p.what}")
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
        suite.set("errors", "0")
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("errors", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
