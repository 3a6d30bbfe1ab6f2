"""The token stream of one video sample: segments, per-token ids, and cached chunkings.

A layout is a fixed sequence of *segments* (moc-spec §2). Each segment is either one shot's
caption (``n`` text tokens) or one shot's video (``F`` frames x ``P`` tokens per frame,
frame-major). Optionally the layout knows the frame geometry ``frame_shape = (h, w)`` with
``P = h * w`` (patches row-major inside a frame), which the spatial methods (sliding tiles, 3D cubes)
need. Everything an attention backend needs to know about the stream (modality, shot, frame, row,
column of every token, and its chunk under a chunking rule) is derived here, once, and cached on
the (immutable, hashable) layout object.

Per-token arrays are CPU ``torch.int64`` tensors of length ``L``; nothing here is ``L x L``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from mocbench.chunking import ChunkRule, ChunkTable, build_chunk_table

TEXT = 0
VIDEO = 1
Placement = Literal["interleaved", "front", "back"]
PLACEMENTS = ("interleaved", "front", "back")


def _check_count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_frame_shape(frame_shape: object, tokens_per_frame: int | None) -> tuple[int, int] | None:
    """``frame_shape`` as a ``(h, w)`` tuple of ints >= 1 whose product is ``tokens_per_frame`` (when given)."""
    if frame_shape is None:
        return None
    if isinstance(frame_shape, (str, bytes)) or not isinstance(frame_shape, Sequence) or len(frame_shape) != 2:
        raise TypeError(f"frame_shape must be (h, w): two ints, patch rows and columns of a frame; got {frame_shape!r}")
    h = _check_count("frame_shape[0] (rows)", frame_shape[0], minimum=1)
    w = _check_count("frame_shape[1] (columns)", frame_shape[1], minimum=1)
    if tokens_per_frame is not None and h * w != tokens_per_frame:
        raise ValueError(f"frame_shape (h, w) = ({h}, {w}) has {h * w} tokens per frame but tokens_per_frame is "
                         f"{tokens_per_frame}; they must agree (tokens_per_frame = h * w)")
    return (h, w)


def _resolve_tokens_per_frame(tokens_per_frame: object, frame_shape: object) -> tuple[int, tuple[int, int] | None]:
    """(tokens_per_frame, frame_shape) from the constructors' arguments: either may be given, not neither."""
    if tokens_per_frame is None:
        if frame_shape is None:
            raise ValueError("give tokens_per_frame=P or frame_shape=(h, w) (then P = h * w)")
        shape = _check_frame_shape(frame_shape, None)
        return shape[0] * shape[1], shape
    tpf = _check_count("tokens_per_frame", tokens_per_frame, minimum=1)
    return tpf, _check_frame_shape(frame_shape, tpf)


def _check_counts(name: str, values: object, *, minimum: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of ints (one per shot), got {values!r}")
    if len(values) == 0:
        raise ValueError(f"{name} must not be empty")
    return tuple(_check_count(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values))


@dataclass(frozen=True)
class Segment:
    """One contiguous run of the stream: a caption (``kind='text'``) or a shot's frames."""

    kind: Literal["text", "video"]
    shot: int
    tokens: int = 0  # text segments: number of caption tokens
    frames: int = 0  # video segments
    tokens_per_frame: int = 0  # video segments

    def __post_init__(self) -> None:
        if self.kind not in ("text", "video"):
            raise ValueError(f"segment kind must be 'text' or 'video', got {self.kind!r}")
        _check_count("segment shot", self.shot, minimum=0)
        if self.kind == "text":
            _check_count("text segment tokens", self.tokens, minimum=1)
            if self.frames or self.tokens_per_frame:
                raise ValueError("a text segment has no frames or tokens_per_frame")
        else:
            _check_count("video segment frames", self.frames, minimum=1)
            _check_count("video segment tokens_per_frame", self.tokens_per_frame, minimum=1)
            if self.tokens:
                raise ValueError("a video segment's size is frames x tokens_per_frame; do not set tokens")

    @property
    def length(self) -> int:
        return self.tokens if self.kind == "text" else self.frames * self.tokens_per_frame


@dataclass(frozen=True)
class TokenLayout:
    """An immutable description of a video sample's token stream.

    Build one with :meth:`single_shot`, :meth:`multi_shot` or :meth:`from_segments`.
    Derived per-token ids (``modality``, ``shot_id``, ``frame_id``, ``patch_id``, ``position``, and
    ``row_id``/``col_id`` when ``frame_shape`` is known) and chunkings (:meth:`chunks`) are computed
    on first use and cached.
    """

    segments: tuple[Segment, ...]
    frame_shape: tuple[int, int] | None = None  # (h, w) patch rows x columns of a frame; None: unknown
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def single_shot(cls, *, text_tokens: int, frames: int, tokens_per_frame: int | None = None,
                    text_placement: Placement = "front",
                    frame_shape: tuple[int, int] | None = None) -> "TokenLayout":
        """One caption (``text_tokens`` may be 0) and ``frames`` x ``tokens_per_frame`` video tokens: the
        caption first (``text_placement="front"``; ``"interleaved"`` is the same for one shot) or after
        the video (``"back"``, e.g. HunyuanVideo, Mochi). ``frame_shape=(h, w)`` gives the frame geometry
        (``tokens_per_frame`` may then be left out; if given it must equal ``h * w``)."""
        if text_placement not in PLACEMENTS:
            raise ValueError(f"text_placement must be one of {PLACEMENTS}, got {text_placement!r}")
        _check_count("text_tokens", text_tokens, minimum=0)
        _check_count("frames", frames, minimum=1)
        tokens_per_frame, shape = _resolve_tokens_per_frame(tokens_per_frame, frame_shape)
        text = [Segment("text", 0, tokens=text_tokens)] if text_tokens else []
        video = [Segment("video", 0, frames=frames, tokens_per_frame=tokens_per_frame)]
        return cls(tuple(video + text if text_placement == "back" else text + video), shape)

    @classmethod
    def multi_shot(
        cls,
        *,
        text_tokens: Sequence[int] | int,
        frames: Sequence[int] | int,
        tokens_per_frame: int | None = None,
        text_placement: Placement = "interleaved",
        shots: int | None = None,
        frame_shape: tuple[int, int] | None = None,
    ) -> "TokenLayout":
        """A multi-shot stream.

        ``text_placement="interleaved"``: ``text_0, video_0, text_1, video_1, ...`` with one
        caption length per shot. ``"front"``: a single global caption (``text_tokens`` has one
        entry, owned by shot 0) followed by every shot's video. ``"back"``: every shot's video, then
        one global caption owned by the last shot (shot ids never decrease along the stream). An int
        for ``frames`` or ``text_tokens`` is repeated ``shots`` times (``shots`` is then required).
        ``frame_shape=(h, w)``: the frame geometry (``tokens_per_frame`` may then be left out; if given it
        must equal ``h * w``).
        """
        if text_placement not in PLACEMENTS:
            raise ValueError(f"text_placement must be one of {PLACEMENTS}, got {text_placement!r}")
        if shots is not None:
            _check_count("shots", shots, minimum=1)
        if isinstance(frames, int) and not isinstance(frames, bool):
            if shots is None:
                raise ValueError("frames is a single int: pass shots=N to repeat it, or a list of frames per shot")
            frames = [frames] * shots
        frames_t = _check_counts("frames", frames, minimum=1)
        n_shots = len(frames_t)
        if shots is not None and shots != n_shots:
            raise ValueError(f"shots={shots} but frames has {n_shots} entries")
        tokens_per_frame, shape = _resolve_tokens_per_frame(tokens_per_frame, frame_shape)
        if isinstance(text_tokens, int) and not isinstance(text_tokens, bool):
            text_tokens = [text_tokens] * (n_shots if text_placement == "interleaved" else 1)
        text_t = _check_counts("text_tokens", text_tokens, minimum=0)
        segs: list[Segment] = []
        if text_placement == "interleaved":
            if len(text_t) != n_shots:
                raise ValueError(
                    f"text_placement='interleaved' needs one text_tokens entry per shot: "
                    f"got {len(text_t)} for {n_shots} shots"
                )
            for s in range(n_shots):
                if text_t[s]:
                    segs.append(Segment("text", s, tokens=text_t[s]))
                segs.append(Segment("video", s, frames=frames_t[s], tokens_per_frame=tokens_per_frame))
        else:
            if len(text_t) != 1:
                raise ValueError(f"text_placement={text_placement!r} takes one global caption: text_tokens must have "
                                 f"1 entry, got {len(text_t)}")
            video = [Segment("video", s, frames=frames_t[s], tokens_per_frame=tokens_per_frame) for s in range(n_shots)]
            owner = 0 if text_placement == "front" else n_shots - 1
            caption = [Segment("text", owner, tokens=text_t[0])] if text_t[0] else []
            segs = caption + video if text_placement == "front" else video + caption
        return cls(tuple(segs), shape)

    @classmethod
    def from_segments(cls, segments: Sequence[Segment], *,
                      frame_shape: tuple[int, int] | None = None) -> "TokenLayout":
        """A layout from explicit segments (validated like the named constructors); ``frame_shape=(h, w)``
        must then satisfy ``h * w = tokens_per_frame`` of the video segments."""
        return cls(tuple(segments), frame_shape)

    def with_frame_shape(self, frame_shape: tuple[int, int] | None) -> "TokenLayout":
        """The same stream with frame geometry ``(h, w)`` (or none), validated against tokens_per_frame."""
        return type(self)(self.segments, frame_shape)

    def __post_init__(self) -> None:
        segs = self.segments
        if not isinstance(segs, tuple) or not segs:
            raise ValueError("a layout needs at least one segment")
        for i, s in enumerate(segs):
            if not isinstance(s, Segment):
                raise TypeError(f"segments[{i}] must be a Segment, got {type(s).__name__}")
        shots = [s.shot for s in segs]
        if shots[0] != 0 or any(b - a not in (0, 1) for a, b in zip(shots, shots[1:])):
            raise ValueError(f"segment shots must start at 0 and increase by at most 1, got {shots}")
        video_shots = [s.shot for s in segs if s.kind == "video"]
        n_shots = shots[-1] + 1
        if sorted(video_shots) != list(range(n_shots)):
            raise ValueError(f"every shot needs exactly one video segment; video segments belong to shots {video_shots}")
        text_shots = [s.shot for s in segs if s.kind == "text"]
        if len(set(text_shots)) != len(text_shots):
            raise ValueError(f"a shot has at most one caption segment; text segments belong to shots {text_shots}")
        tpf = {s.tokens_per_frame for s in segs if s.kind == "video"}
        if len(tpf) != 1:
            raise ValueError(f"all video segments must share tokens_per_frame, got {sorted(tpf)}")
        # frozen dataclass: store the validated tuple (a list from YAML would not hash)
        object.__setattr__(self, "frame_shape", _check_frame_shape(self.frame_shape, next(iter(tpf))))

    # ----------------------------------------------------------------- scalar facts
    @property
    def num_tokens(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def num_shots(self) -> int:
        return self.segments[-1].shot + 1

    @property
    def tokens_per_frame(self) -> int:
        return next(s.tokens_per_frame for s in self.segments if s.kind == "video")

    @property
    def num_text_tokens(self) -> int:
        return sum(s.length for s in self.segments if s.kind == "text")

    @property
    def num_video_tokens(self) -> int:
        return self.num_tokens - self.num_text_tokens

    @property
    def frames_per_shot(self) -> tuple[int, ...]:
        return tuple(s.frames for s in self.segments if s.kind == "video")

    @property
    def segment_starts(self) -> tuple[int, ...]:
        starts, pos = [], 0
        for s in self.segments:
            starts.append(pos)
            pos += s.length
        return tuple(starts)

    def describe(self) -> str:
        parts = []
        for s in self.segments:
            parts.append(f"T{s.shot}[{s.tokens}]" if s.kind == "text" else f"V{s.shot}[{s.frames}x{s.tokens_per_frame}]")
        geometry = f" frame={self.frame_shape[0]}x{self.frame_shape[1]}" if self.frame_shape else ""
        return f"L={self.num_tokens} shots={self.num_shots}{geometry} " + " ".join(parts)

    # ----------------------------------------------------------------- per-token ids
    def _token_ids(self) -> dict[str, torch.Tensor]:
        if "ids" not in self._cache:
            mod, shot, frame, seg, patch = [], [], [], [], []
            for i, s in enumerate(self.segments):
                n = s.length
                mod.append(torch.full((n,), TEXT if s.kind == "text" else VIDEO, dtype=torch.int64))
                shot.append(torch.full((n,), s.shot, dtype=torch.int64))
                seg.append(torch.full((n,), i, dtype=torch.int64))
                if s.kind == "text":
                    frame.append(torch.full((n,), -1, dtype=torch.int64))
                    patch.append(torch.full((n,), -1, dtype=torch.int64))
                else:
                    frame.append(torch.arange(s.frames, dtype=torch.int64).repeat_interleave(s.tokens_per_frame))
                    patch.append(torch.arange(s.tokens_per_frame, dtype=torch.int64).repeat(s.frames))
            self._cache["ids"] = {
                "modality": torch.cat(mod),
                "shot": torch.cat(shot),
                "frame": torch.cat(frame),
                "segment": torch.cat(seg),
                "patch": torch.cat(patch),
            }
        return self._cache["ids"]

    def _grid_ids(self) -> dict[str, torch.Tensor]:
        if self.frame_shape is None:
            raise ValueError(f"this layout has no frame geometry ({self.describe()}); build it with "
                             f"frame_shape=(h, w), h * w = tokens_per_frame = {self.tokens_per_frame}")
        if "grid" not in self._cache:
            w = self.frame_shape[1]
            patch = self.patch_id
            video = patch >= 0
            self._cache["grid"] = {"row": torch.where(video, patch // w, -1), "col": torch.where(video, patch % w, -1)}
        return self._cache["grid"]

    @property
    def modality(self) -> torch.Tensor:
        """``(L,)`` int64: 0 for text (``mocbench.layout.TEXT``), 1 for video."""
        return self._token_ids()["modality"]

    @property
    def is_text(self) -> torch.Tensor:
        """``(L,)`` bool: True for caption tokens (``modality == TEXT``)."""
        return self.modality == TEXT

    @property
    def shot_id(self) -> torch.Tensor:
        """``(L,)`` int64: the shot every token belongs to."""
        return self._token_ids()["shot"]

    @property
    def frame_id(self) -> torch.Tensor:
        """``(L,)`` int64: frame index within the token's shot; -1 for text tokens."""
        return self._token_ids()["frame"]

    @property
    def patch_id(self) -> torch.Tensor:
        """``(L,)`` int64: index of the token inside its frame (row-major, ``0 .. P-1``); -1 for text."""
        return self._token_ids()["patch"]

    @property
    def row_id(self) -> torch.Tensor:
        """``(L,)`` int64: patch row inside the frame (``0 .. h-1``); -1 for text. Needs ``frame_shape``."""
        return self._grid_ids()["row"]

    @property
    def col_id(self) -> torch.Tensor:
        """``(L,)`` int64: patch column inside the frame (``0 .. w-1``); -1 for text. Needs ``frame_shape``."""
        return self._grid_ids()["col"]

    @property
    def segment_id(self) -> torch.Tensor:
        """``(L,)`` int64: index into :attr:`segments`."""
        return self._token_ids()["segment"]

    def chunks(self, rule: str | ChunkRule) -> ChunkTable:
        """The chunking of this stream under ``rule`` (moc-spec §3), cached per rule."""
        parsed = rule if isinstance(rule, ChunkRule) else ChunkRule.parse(rule)
        key = ("chunks", parsed)
        if key not in self._cache:
            self._cache[key] = build_chunk_table(self, parsed)
        return self._cache[key]
