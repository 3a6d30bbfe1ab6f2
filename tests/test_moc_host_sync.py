"""No host synchronisation in MoC's prepare paths (issue 13, deliverable 4), checked without a GPU.

A CUDA kernel launch returns at once; anything that reads a device value on the host (``.item()``,
``int(t)``, ``.tolist()``, ``nonzero``, boolean indexing, ``bincount`` and ``repeat_interleave`` without
an output size, ...) stalls the host until the device has finished all queued work. On the ``meta``
device every such read fails (a meta tensor has shapes but no data), so running routing and an impl's
prepare on meta tensors (layout tables warmed on CPU first, as they are cached per layout) proves that
the path never reads device data. ``varlen`` reads a few numbers back on purpose, once per call
(:func:`mocbench.backends.moc.varlen.read_back`; its docstring says why): that is checked by counting.
"""

import pytest
import torch

import mocbench
from mocbench.backends.moc import varlen

LAYOUTS = {
    "interleaved": lambda: mocbench.TokenLayout.multi_shot(text_tokens=[4, 3, 5], frames=[2, 3, 2], tokens_per_frame=8),
    "front": lambda: mocbench.TokenLayout.multi_shot(text_tokens=6, frames=[3, 2], tokens_per_frame=8,
                                                     text_placement="front", shots=2),
    "single": lambda: mocbench.TokenLayout.single_shot(text_tokens=5, frames=4, tokens_per_frame=8),
}
SYNC_FREE_IMPLS = ("reference", "flex", "flex_eager", "triton")
ROUTINGS = ({}, {"routing": "tile", "tile": 8}, {"routing": "tile", "tile": 3})
CHUNKINGS = ("frame", "tokens:5", "fixed:6")


def _prepare_on_meta(impl: str, layout, **params):
    """Routing and ``impl``'s prepare on meta q/k, after one CPU call has cached the layout tables."""
    b = mocbench.get_backend("moc", impl=impl, top_k=2, **params)
    cpu = torch.randn(2, 2, layout.num_tokens, 8, generator=torch.Generator().manual_seed(0))
    b._prepare(cpu, cpu, layout, training=False, generator=None)
    meta = torch.empty(2, 2, layout.num_tokens, 8, device="meta")
    # _prepare skips the capability check (meta is no device a user runs on) but runs the same code
    return b._prepare(meta, meta, layout, training=False, generator=None)


@pytest.mark.parametrize("routing", ROUTINGS, ids=["token", "tile8", "tile3"])
@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("impl", SYNC_FREE_IMPLS)
def test_prepare_never_reads_device_data(impl, layout_name, chunking, routing):
    plan = _prepare_on_meta(impl, LAYOUTS[layout_name](), chunking=chunking, **routing)
    assert plan.selected.device.type == "meta" and plan.impl == impl


def test_the_meta_check_catches_a_host_read():
    """The check can fail: varlen's deliberate read-back is refused on meta tensors."""
    with pytest.raises(NotImplementedError, match="meta"):
        _prepare_on_meta("varlen", LAYOUTS["interleaved"](), chunking="frame")


@pytest.mark.parametrize("routing", ROUTINGS[:2], ids=["token", "tile8"])
@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_varlen_reads_back_once_per_prepare(monkeypatch, layout_name, routing):
    """Everything in varlen's prepare except its single ``read_back`` runs on meta tensors, and it calls
    ``read_back`` exactly once per call (the values fed back on meta are the CPU call's)."""
    layout = LAYOUTS[layout_name]()
    seen = []
    real = varlen.read_back
    monkeypatch.setattr(varlen, "read_back", lambda t: seen.append(real(t)) or seen[-1])
    b = mocbench.get_backend("moc", impl="varlen", top_k=2, chunking="frame", **routing)
    cpu = torch.randn(2, 2, layout.num_tokens, 8, generator=torch.Generator().manual_seed(0))
    b._prepare(cpu, cpu, layout, training=False, generator=None)
    assert len(seen) == 1
    fed = seen[0]
    calls = []
    monkeypatch.setattr(varlen, "read_back", lambda t: calls.append(t.device.type) or fed)
    meta = torch.empty(2, 2, layout.num_tokens, 8, device="meta")
    plan = b._prepare(meta, meta, layout, training=False, generator=None)
    assert calls == ["meta"] and plan.impl == "varlen"
