"""The processor wrapper: a model's own attention processor, with its SDPA call answered by a backend.

diffusers has no hook for a new attention backend: ``AttentionBackendName`` is a closed enum, its
dispatcher never sees a layout, and CogVideoX's and Mochi's processors call
``F.scaled_dot_product_attention`` directly. So the model's processor runs unchanged (projections,
norms, RoPE, un-padding: all its own code) inside a ``TorchFunctionMode`` that answers exactly one
function, ``torch.nn.functional.scaled_dot_product_attention``, with a :class:`StreamAttention`
(every other torch call passes straight through). Processors reach SDPA directly or through
diffusers' ``native`` dispatch backend; a processor that computed attention without calling it
(another dispatch backend) raises instead of silently keeping the model's attention.

``Attention.forward`` drops keyword arguments that its processor's ``__call__`` does not name, so a
``**kwargs`` wrapper would lose ``image_rotary_emb``: the wrapper class made for each processor class
carries that class's exact ``__call__`` signature.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch.overrides import TorchFunctionMode

from mocbench.integrations.diffusers.attention import StreamAttention

_SDPA = torch.nn.functional.scaled_dot_product_attention


class _AnswerSDPA(TorchFunctionMode):
    """While active, SDPA calls go to ``attention``; everything else runs as usual."""

    def __init__(self, attention: StreamAttention, training: bool):
        super().__init__()
        self.attention, self.training, self.calls = attention, training, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:  # the mode is off inside this method, so the backend's own torch calls run plainly
            self.calls += 1
            return self.attention(*args, training=self.training, **kwargs)
        return func(*args, **kwargs)


class StreamProcessor:
    """Base of the per-class wrappers made by :func:`wrap_processor`; ``inner`` is the model's processor."""

    def __init__(self, inner, attention: StreamAttention):
        self.inner, self.attention = inner, attention

    def _answer(self, attn, *args, **kwargs):
        mode = _AnswerSDPA(self.attention, training=bool(getattr(attn, "training", False)))
        with mode:
            out = self.inner(attn, *args, **kwargs)
        if mode.calls == 0:
            backend = getattr(self.inner, "_attention_backend", None)
            raise RuntimeError(
                f"layer {self.attention.name}: {type(self.inner).__name__} computed attention without calling "
                f"torch's scaled_dot_product_attention (diffusers attention backend: {backend or 'the active one'}), "
                f"so it ran the model's own attention instead of {self.attention.backend.name!r}. Use diffusers' "
                f"'native' attention backend (transformer.reset_attention_backend()) with mocbench backends.")
        return out

    def __getattr__(self, name):  # _attention_backend, _parallel_config, ... of the model's processor
        if name in ("inner", "attention"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.attention.backend!r} in {type(self.inner).__name__})"


@functools.cache
def _wrapper_class(inner_cls: type) -> type:
    def __call__(self, attn, *args, **kwargs):
        return self._answer(attn, *args, **kwargs)

    __call__.__signature__ = inspect.signature(inner_cls.__call__)
    return type(f"Mocbench{inner_cls.__name__}", (StreamProcessor,), {
        "__call__": __call__,
        "__doc__": f"{inner_cls.__name__} with its scaled_dot_product_attention call answered by a mocbench backend.",
    })


def wrap_processor(inner, attention: StreamAttention) -> StreamProcessor:
    """``inner`` (the model's processor) with its SDPA call answered by ``attention``; same ``__call__`` signature."""
    return _wrapper_class(type(inner))(inner, attention)
