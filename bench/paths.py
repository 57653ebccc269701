"""Where things are in the checkout: the one place that knows the repository's layout.

Everything kpbench reads from its own tree (the BPF sources, the default results
folder, the commit a run is labelled with) is found from here, so moving a module
never changes what it finds.
"""

from __future__ import annotations

from pathlib import Path

#: The repository root (the folder holding ``pyproject.toml``).
CHECKOUT = Path(__file__).resolve().parents[1]
#: The BPF probe sources (``probes/*.c``).
PROBES_DIR = CHECKOUT / "probes"
#: Where ``kpbench run`` writes results when ``-o`` is not given.
RESULTS_DIR = CHECKOUT / "results"
