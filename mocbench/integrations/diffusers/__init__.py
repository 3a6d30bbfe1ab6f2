"""Run any mocbench registry backend inside diffusers' video transformers (extra ``mocbench[diffusers]``).

    from mocbench.integrations.diffusers import use_backend
    with use_backend(transformer, "moc", top_k=2, chunking="frame", causal=False) as handle:
        video = transformer(**inputs).sample
    print(handle.stats().sparsity, handle.per_layer())

Files: :mod:`.specs` (what each model's stream looks like; :func:`register_model`), :mod:`.attention`
(one layer's calls -> layout -> backend, key-padding masks), :mod:`.processor` (the wrapper that answers
the model's own SDPA call), :mod:`.handle` (:func:`apply_backend`, :func:`use_backend`,
:class:`BackendHandle`). Nothing here imports diffusers: it works on the transformer object it is given.
"""

from mocbench.integrations.diffusers.handle import BackendHandle, apply_backend, use_backend
from mocbench.integrations.diffusers.specs import ModelSpec, list_models, register_model, spec_for

__all__ = ["BackendHandle", "ModelSpec", "apply_backend", "list_models", "register_model", "spec_for", "use_backend"]
