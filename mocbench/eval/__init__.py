"""Quality evaluation of sampled videos: fidelity to dense, held-out loss, VBench (real and proxies),
long-range memory (position-free colour recall, :mod:`mocbench.eval.recall`), cost columns, and the
paper-style tables built from their rows.

``mocbench eval SAMPLES`` runs evaluators (:mod:`mocbench.eval.runner`); ``mocbench paper CONFIG``
regenerates a table end to end (:mod:`mocbench.eval.paper`); ``mocbench report STORE --table paper2``
prints it (:mod:`mocbench.eval.paper_table`). The package imports nothing itself, so the command-line parsers
can list the evaluators (:mod:`mocbench.eval.names`) without loading them.
"""
