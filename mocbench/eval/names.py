"""The evaluators of ``mocbench eval``, by name: what the command line lists and validates without importing
them (their modules pull in Lightning, OpenCV and the VBench driver; :mod:`mocbench.eval.runner` runs them).

* ``fidelity``: PSNR / SSIM against dense samples from the same checkpoint, captions and seeds;
* ``val_loss``: held-out flow-matching loss at fixed timesteps and noise (also per shot);
* ``vbench_proxy``: weight-free stand-ins for VBench dimensions (marked as proxies);
* ``memory``: position-free recall of returning entities and scenes (:mod:`mocbench.eval.recall`);
* ``cost``: sparsity, FLOPs and latency columns of the sampled backend;
* ``vbench``: the real VBench in its own environment (one row per dimension).
"""

EVALUATORS = ("fidelity", "val_loss", "vbench_proxy", "memory", "cost", "vbench")
