"""Ablation sweeps from config (``mocbench sweep``): spec expansion, resumable staged cells,
routing introspection of MoC while sampling, ablation tables and figures."""
