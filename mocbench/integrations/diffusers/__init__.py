"""Run any mocbench registry backend inside diffusers' video transformers (extra ``mocbench[diffusers]``).

    from mocbench.integrations.diffusers import use_backend
    with use_backend(transformer, "moc", top_k=2, chunking="frame", causal=False, fidelity=True) as handle:
        video = transformer(**inputs).sample
    print(handle.stats().sparsity, handle.per_layer(), handle.fidelity())

Files: :mod:`.specs` (what each model's stream looks like; :func:`register_model`), :mod:`.attention`
(one layer's calls -> layout -> backend, key-padding masks), :mod:`.processor` (the wrapper that answers
the model's own SDPA call), :mod:`.handle` (:func:`apply_backend`, :func:`use_backend`,
:class:`BackendHandle`), :mod:`.fidelity` (per-layer error against the model's dense attention). These
import no diffusers: they work on the transformer object they are given. ``mocbench bench-model``
(:mod:`.bench_config`, :mod:`.bench`, :mod:`.models`, :mod:`.extrapolate`), ``mocbench sample-model``
(:mod:`.sample`) and local weights (:mod:`.weights`) use diffusers; :mod:`.cli` registers both commands.
"""

from mocbench.integrations.diffusers.fidelity import Fidelity
from mocbench.integrations.diffusers.handle import BackendHandle, apply_backend, use_backend
from mocbench.integrations.diffusers.specs import ModelSpec, list_models, register_model, spec_for

__all__ = ["BackendHandle", "Fidelity", "ModelSpec", "apply_backend", "list_models", "register_model", "spec_for",
           "use_backend"]
