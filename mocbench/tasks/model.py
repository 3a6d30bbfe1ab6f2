"""A small video diffusion transformer (DiT) whose every attention layer is a mocbench backend.

Pixels go straight in (no VAE): a 3D patch embedding cuts each shot into ``F' = ceil(F / pt)`` frames
of ``P = (H / p) * (W / p)`` patches (a last partial temporal patch repeats the shot's last frame). The token stream follows moc-spec §2, interleaved:
``text_0, video_0, text_1, video_1, ...``, and its :class:`~mocbench.TokenLayout` is passed to
the backend in every block, so dense, fixed-sparse and MoC attention are interchangeable.
Blocks are joint text+video attention with AdaLN-Zero timestep conditioning and QK-norm.
Positions are learned embeddings of shot, frame, patch row and column (video) and of shot and
in-caption position (text), so the model knows which shot and frame every token belongs to.

Tensor legend: ``B`` batch, ``S`` shots, ``F`` frames per shot, ``Cin`` pixel channels, ``H, W``
pixels, ``T`` caption tokens per shot, ``L`` stream length, ``C`` width, ``nh`` heads, ``D`` head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

import mocbench
from mocbench.config import LayoutConfig
from mocbench.layout import TokenLayout
from mocbench.tasks.text import TextEncoder


@dataclass
class ModelConfig:
    """The network's architecture (the ``model:`` section of a task config). ~0.3M params: dim=64
    depth=4; ~100M: dim=768 depth=14 heads=12."""

    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 4
    temporal_patch: int = 1
    text_layers: int = 2
    max_shots: int = 8
    max_frames: int = 16  # per shot, in pixel frames
    prediction: str = "x"  # network output: "x" (clean video, turned into a velocity) or "v" (velocity)


@dataclass(frozen=True)
class DiTShape:
    """What the model was built for: its architecture and the data it takes; checked against every
    batch (see ``check_input``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    channels: int = 3
    max_height: int = 64
    max_width: int = 64
    text_tokens: int = 16  # max caption tokens per shot
    vocab_size: int = 32


def stream_layout(model: ModelConfig, shots: int, frames: int, height: int, width: int,
                  text_tokens: int) -> TokenLayout:
    """The layout of the model's stream for ``shots`` shots of ``frames`` pixel frames of ``height x width`` px
    and ``text_tokens`` caption tokens per shot: interleaved ``text_s, video_s`` (single-shot: one caption, one
    video); a frame is its grid of ``(H / p) x (W / p)`` patches (the frame geometry), ``ceil(F / pt)`` frames
    per shot (a last partial temporal patch is padded)."""
    grid = [height // model.patch_size, width // model.patch_size]  # patch rows x columns
    return LayoutConfig(shots=shots, frames=-(-frames // model.temporal_patch), tokens_per_frame=grid[0] * grid[1],
                        text_tokens=text_tokens, text_placement="interleaved", frame_shape=grid).build()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t_b: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of ``t`` in [0, 1] (scaled by 1000 as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t_b.device, dtype=torch.float32) / half)
    args = 1000.0 * t_b.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention over the whole stream; the kernel is ``backend``."""

    def __init__(self, dim: int, heads: int, backend):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads)
        self.k_norm = nn.RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.backend = backend

    def forward(self, x_blc: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        B, L, C = x_blc.shape
        q, k, v = self.qkv(x_blc).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        out_bhld = self.backend(q, k, v, layout, training=self.training)
        return self.proj(out_bhld.transpose(1, 2).reshape(B, L, C))


class DiTBlock(nn.Module):
    """AdaLN-Zero block: the timestep embedding sets shift/scale/gate of attention and MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, backend):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, backend)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)  # zero init: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1), layout)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class VideoDiT(nn.Module):
    """``forward(video (B,S,F,Cin,H,W), t (B,), text_ids (B,S,T)) -> velocity (B,S,F,Cin,H,W)``."""

    def __init__(self, shape: DiTShape, backend_name: str = "dense", backend_params: dict | None = None):
        super().__init__()
        self.shape = shape
        self.backend = mocbench.get_backend(backend_name, **(backend_params or {}))
        C, p, pt = shape.model.dim, shape.model.patch_size, shape.model.temporal_patch
        self.patch = nn.Conv3d(shape.channels, C, kernel_size=(pt, p, p), stride=(pt, p, p))
        self.text = TextEncoder(shape.vocab_size, C, shape.text_tokens, shape.model.text_layers)
        self.shot_emb = nn.Parameter(torch.zeros(shape.model.max_shots, C))
        self.frame_emb = nn.Parameter(torch.zeros(shape.model.max_frames // pt, C))
        self.row_emb = nn.Parameter(torch.zeros(shape.max_height // p, C))
        self.col_emb = nn.Parameter(torch.zeros(shape.max_width // p, C))
        self.type_emb = nn.Parameter(torch.zeros(2, C))  # 0 text, 1 video
        for e in (self.shot_emb, self.frame_emb, self.row_emb, self.col_emb, self.type_emb):
            nn.init.normal_(e, std=0.02)
        self.t_mlp = nn.Sequential(nn.Linear(C, C), nn.SiLU(), nn.Linear(C, C))
        m = shape.model
        self.blocks = nn.ModuleList(DiTBlock(C, m.heads, m.mlp_ratio, self.backend.for_layer(i)) for i in range(m.depth))
        self.final_norm = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))
        self.out = nn.Linear(C, pt * p * p * shape.channels)
        for m in (self.final_ada[1], self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def set_backend(self, name: str, params: dict | None = None) -> None:
        """Swap the attention kernel of every block (weights unchanged), e.g. dense -> moc."""
        self.backend = mocbench.get_backend(name, **(params or {}))
        for i, blk in enumerate(self.blocks):
            blk.attn.backend = self.backend.for_layer(i)

    # ------------------------------------------------------------------ layout
    def check_input(self, S: int, F_: int, H: int, W: int, T: int, Cin: int) -> None:
        """Raise ValueError naming the size the model cannot handle."""
        s = self.shape
        problems = []
        if Cin != s.channels:
            problems.append(f"channels={Cin} but the model has {s.channels}")
        if S > s.model.max_shots:
            problems.append(f"shots={S} > model max_shots={s.model.max_shots}")
        if F_ > s.model.max_frames:
            problems.append(f"frames={F_} > max_frames={s.model.max_frames}")
        for name, v, mx in (("height", H, s.max_height), ("width", W, s.max_width)):
            if v > mx or v % s.model.patch_size:
                problems.append(f"{name}={v} must be <= max_{name}={mx} and a multiple of "
                                f"patch_size={s.model.patch_size}")
        if T > s.text_tokens:
            problems.append(f"caption tokens={T} > model text_tokens={s.text_tokens}")
        if problems:
            raise ValueError("the model cannot handle this input: " + "; ".join(problems))

    def layout_for(self, S: int, F_: int, H: int, W: int, T: int) -> TokenLayout:
        """The stream's layout (:func:`stream_layout`)."""
        return stream_layout(self.shape.model, S, F_, H, W, T)

    # ------------------------------------------------------------------ forward
    def forward(self, video: torch.Tensor, t_b: torch.Tensor, text_bst: torch.Tensor) -> torch.Tensor:
        B, S, F_in, Cin, H, W = video.shape
        T = text_bst.shape[-1]
        self.check_input(S, F_in, H, W, T, Cin)
        sh = self.shape
        p, pt = sh.model.patch_size, sh.model.temporal_patch
        if F_in % pt:  # repeat the last frame up to a whole temporal patch; cropped from the output
            video = torch.cat([video, video[:, :, -1:].expand(-1, -1, pt - F_in % pt, -1, -1, -1)], dim=2)
        F_ = video.shape[2]
        hp, wp, fp = H // p, W // p, F_ // pt
        layout = self.layout_for(S, F_, H, W, T)

        x = self.patch(video.reshape(B * S, F_, Cin, H, W).transpose(1, 2))  # (B*S, C, fp, hp, wp)
        x = x.flatten(2).transpose(1, 2).reshape(B, S, fp * hp * wp, sh.model.dim)
        pos = (self.frame_emb[:fp, None, None] + self.row_emb[None, :hp, None] + self.col_emb[None, None, :wp])
        x = x + pos.reshape(1, 1, -1, sh.model.dim) + self.shot_emb[None, :S, None] + self.type_emb[1]
        txt = self.text(text_bst) + self.shot_emb[None, :S, None] + self.type_emb[0]  # (B, S, T, C)
        # interleave per shot: [text_s, video_s] (text_tokens=0 gives a video-only stream)
        C = sh.model.dim
        stream = torch.cat([txt, x], dim=2).reshape(B, S * (T + fp * hp * wp), C) if T else x.reshape(B, -1, C)

        c = self.t_mlp(timestep_embedding(t_b, sh.model.dim).to(stream.dtype))
        for blk in self.blocks:
            stream = blk(stream, c, layout)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.out(modulate(self.final_norm(stream), shift, scale))
        vid = out.reshape(B, S, T + fp * hp * wp, -1)[:, :, T:]  # video tokens of each shot
        vid = vid.reshape(B, S, fp, hp, wp, pt, p, p, Cin)
        return vid.permute(0, 1, 2, 5, 8, 3, 6, 4, 7).reshape(B, S, F_, Cin, H, W)[:, :, :F_in]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
