"""Memory checked before a bench cell allocates anything: its estimated peak against the budget.

A cell's estimated peak (no tensors) is the larger of its two steps, which run one after another:

* the cell itself: q, k, v and the output of the cell's dtype (B*H*L*D each), for ``fwd+bwd`` also
  ``grad_out`` and dq, dk, dv; on CPU the float32 draw of one input before its cast; plus the
  backend's own working set, ``backend.workspace_bytes(layout, ...)`` (masks, scores, routing,
  index buffers: declared by each backend and MoC implementation, see :mod:`mocbench.workspace`);
* validation on the shrunken layout (:mod:`mocbench.bench.validate`): float64 and cell-dtype copies of
  the inputs, the (1, H, Ls, Ls) pattern, the float64 oracle's score tensors (three; six with
  gradients) and the backend's working set at that size.

The budget is ``max_memory_gib`` (``--max-memory``) when set, else on CUDA the device's free memory
plus what torch's caching allocator holds unused, else on CPU ``MemAvailable`` of /proc/meminfo.
A cell over budget is recorded ``skipped`` with ``needs X GiB, Y GiB available``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from mocbench.backend import AttentionBackend
from mocbench.bench.config import BenchConfig, Cell
from mocbench.bench.validate import small_layout
from mocbench.workspace import itemsize

GIB = 1 << 30


@dataclass(frozen=True)
class MemoryCheck:
    need_bytes: int
    available_bytes: int | None  # None: the budget could not be read (see ``source``)
    source: str  # where the budget came from

    @property
    def need_gib(self) -> float:
        return self.need_bytes / GIB

    @property
    def reason(self) -> str | None:
        """The skip reason when the cell does not fit, else None."""
        if self.available_bytes is None or self.need_bytes <= self.available_bytes:
            return None
        return f"needs {gib_text(self.need_bytes)} GiB, {gib_text(self.available_bytes)} GiB available ({self.source})"


def gib_text(n_bytes: int) -> str:
    x = n_bytes / GIB
    return f"{x:.1f}" if x >= 0.1 else f"{x:.2g}"


def cell_memory_bytes(backend: AttentionBackend, cell: Cell, cfg: BenchConfig) -> int:
    """Estimated peak bytes of ``cell`` on its device: max(validation step, measurement)."""
    dtype, device, grads = cell.torch_dtype, cell.device, cell.pass_ == "fwd+bwd"
    layout = cell.layout()
    e = itemsize(dtype)
    rows = cell.batch * cell.heads * layout.num_tokens * cell.head_dim
    need = (4 + (4 if grads else 0)) * rows * e  # q, k, v, out (+ grad_out, dq, dk, dv)
    if torch.device(device).type == "cpu" and dtype != torch.float32:
        need += rows * 4  # torch.randn draws float32, then casts
    need += backend.workspace_bytes(layout, batch=cell.batch, heads=cell.heads, head_dim=cell.head_dim, dtype=dtype,
                                    device=device, requires_grad=grads)
    if not cfg.validate.enabled:
        return need
    v = cfg.validate
    small = small_layout(cell.geometry, max_frames=v.max_frames, max_tokens_per_frame=v.max_tokens_per_frame,
                         max_text_tokens=v.max_text_tokens)
    ls = small.num_tokens
    small_rows, scores = v.heads * ls * cell.head_dim, v.heads * ls * ls
    check = small_rows * (3 * 8 + 3 * e + 8 + e) + scores * (3 + 1 + 3 * 8)  # inputs, outputs, pattern, oracle
    if grads:
        check += small_rows * (2 * 8 + 3 * e + 3 * 8) + scores * 3 * 8  # grad_out, both sides' gradients
    check += backend.workspace_bytes(small, batch=1, heads=v.heads, head_dim=cell.head_dim, dtype=dtype,
                                     device=device, requires_grad=grads)
    return max(need, check)


def available_bytes(device: str, max_memory_gib: float | None) -> tuple[int | None, str]:
    """(bytes the cell may use, where that figure comes from)."""
    if max_memory_gib is not None:
        return int(max_memory_gib * GIB), "max_memory_gib"
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return free + cached, f"free on {dev}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable"
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None, "unknown: no /proc/meminfo MemAvailable and no psutil; set --max-memory"
    return int(psutil.virtual_memory().available), "psutil available"


def memory_check(need_bytes: int, device: str, max_memory_gib: float | None) -> MemoryCheck:
    """``need_bytes`` (see :func:`cell_memory_bytes`) against the budget of ``device``."""
    available, source = available_bytes(device, max_memory_gib)
    if available is None:
        warnings.warn(f"bench: memory not checked before the cell ({source})", stacklevel=2)
    return MemoryCheck(need_bytes, available, source)
