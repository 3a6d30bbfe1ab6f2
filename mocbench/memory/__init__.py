"""The memory benchmark (``mocbench memory``): does sparse attention keep long-range memory?

Config (:mod:`.config`), stages (:mod:`.runner`), tables and figures (:mod:`.report`), command (:mod:`.cli`);
the evaluator is :mod:`mocbench.eval.recall`, the task ShapeShots ``task=recall``.
"""
