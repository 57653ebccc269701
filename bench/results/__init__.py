"""Results: one JSON document per run, written atomically, read into a typed model.

- :mod:`bench.results.schema` — the document's shape (TypedDicts), its
  version history and the upgrade of every older version;
- :mod:`bench.results.environment` — what a run records about the machine,
  and which of it decides whether two runs are comparable;
- :mod:`bench.results.summarise` — a point's summary pooled over its
  repetitions (percentiles from merged histograms);
- :mod:`bench.results.writer` — the builders of points and repetitions and
  the atomic writer the runners use;
- :mod:`bench.results.reader` — a file validated against
  docs/result.schema.json (and upgraded), within the input limits;
- :mod:`bench.results.model` — the read model: frozen Result / Point /
  Repetition objects built once per document, caching their histograms;
- :mod:`bench.results.store` — where runs are filed and which run a path
  means; :mod:`bench.results.baseline` — several runs pooled into one.

New code imports from the module that owns a name; the names below are
re-exported for the runners and the comparison, which predate the split.
"""

from bench.results.environment import capture_environment
from bench.results.model import runs_of
from bench.results.reader import iter_points, load_result
from bench.results.schema import PointDoc, PointStatus, RepetitionDoc, ResultDoc
from bench.results.store import result_path
from bench.results.writer import ResultExists, ResultWriter, make_point, make_repetition

__all__ = [
    "PointDoc", "PointStatus", "RepetitionDoc", "ResultDoc", "ResultExists", "ResultWriter",
    "capture_environment", "iter_points", "load_result", "make_point", "make_repetition",
    "result_path", "runs_of",
]
