"""The kernel benchmark harness: sweep configs, timing, validation, result store, reports.

``mocbench bench CONFIG [key=value ...]`` runs :func:`run_bench`; ``mocbench report STORE`` runs
:func:`mocbench.bench.report.write_report`. One module per job:

* ``config``   the sweep schema (backends x workloads) and its expansion into keyed cells
* ``validate`` each backend against the float64 masked-softmax oracle on a small layout
* ``timing``   warm-up, repeats, median/IQR (CPU perf_counter loop, CUDA events + L2 flush)
* ``runner``   skip / validate / measure one cell, write its row
* ``store``    the CSV ResultStore, rewritten atomically after every cell (resumable)
* ``env``      torch / CUDA / GPU / CPU / git SHA for every row
* ``tables`` and ``figures``  pure functions of the store (pandas, seaborn)
"""

from mocbench.bench.config import BenchConfig, Cell, check_config, expand_cells, load_bench_config
from mocbench.bench.runner import measure_cell, run_bench
from mocbench.bench.store import ResultStore, load_table

__all__ = ["BenchConfig", "Cell", "ResultStore", "check_config", "expand_cells", "load_bench_config", "load_table", "measure_cell",
           "run_bench"]
