"""Quality evaluation of sampled videos: fidelity to dense, held-out loss, VBench (real and proxies),
long-range memory (position-free colour recall, :mod:`mocbench.eval.recall`), cost columns, and the
paper-style tables built from their rows.

``mocbench eval SAMPLES`` runs evaluators (:mod:`mocbench.eval.runner`); ``mocbench paper CONFIG``
regenerates a table end to end (:mod:`mocbench.eval.paper`); ``mocbench report STORE --table paper2``
prints it (:mod:`mocbench.eval.paper_table`).
"""

from mocbench.eval.runner import EVALUATORS, EvalRequest, evaluate
from mocbench.eval.samples import SampleSet

__all__ = ["EVALUATORS", "EvalRequest", "SampleSet", "evaluate"]
