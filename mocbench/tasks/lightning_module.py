"""Lightning tasks: ``SingleShotVideoTask`` and ``MultiShotVideoTask`` (flow-matching video DiT).

Training: rectified-flow loss on pixels, AdamW with linear warm-up, gradient clipping (by the
Trainer), optional EMA of the weights (used for sampling), caption dropout to ``<null>`` for
classifier-free guidance. The full :class:`TaskConfig` and the tokenizer's words are saved in
every checkpoint, so ``mocbench sample`` needs nothing else; the attention backend is not part
of the weights and can be swapped at load time (:meth:`VideoTask.set_backend`).
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from omegaconf import OmegaConf

from mocbench.config import config_errors, parse_overrides
from mocbench.tasks.checkpoint import read_checkpoint
from mocbench.tasks.config import TaskConfig, load_task_config, to_dict
from mocbench.tasks.flow import flow_loss, guided, integrate, sample_timesteps, velocity_from_output
from mocbench.tasks.model import DiTShape, VideoDiT
from mocbench.tasks.text import Tokenizer


def dit_shape(cfg: TaskConfig, vocab_size: int) -> DiTShape:
    m, d = cfg.model, cfg.data
    return DiTShape(model=m, max_height=d.height, max_width=d.width, text_tokens=max(d.text_tokens, 1),
                    vocab_size=vocab_size)


class VideoTask(L.LightningModule):
    """Shared by the single- and multi-shot tasks; they differ only in the shots they accept."""

    task_name = "multi_shot"

    def __init__(self, config: dict, vocab: list[str]):
        super().__init__()
        self.save_hyperparameters()
        self.cfg: TaskConfig = load_task_config(base=config)
        self.check_task_kind()
        self.tokenizer = Tokenizer(vocab[3:])  # the saved list includes the special tokens
        b = self.cfg.backend
        self.model = VideoDiT(dit_shape(self.cfg, len(self.tokenizer)), b.name, dict(b.params))
        self.ema = None
        if self.cfg.optim.ema_decay > 0:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self._gen = torch.Generator().manual_seed(self.cfg.seed)  # timesteps / noise / dropout

    def check_task_kind(self) -> None:
        if self.cfg.task != self.task_name:
            raise ValueError(f"{type(self).__name__} needs task={self.task_name!r}, got {self.cfg.task!r}")

    # ------------------------------------------------------------------ backend
    def set_backend(self, name: str, params: dict | None = None) -> None:
        """Use another attention backend from now on (training or sampling); weights unchanged."""
        for m in (self.model, self.ema):
            if m is not None:
                m.set_backend(name, params)

    def velocity(self, model: VideoDiT, x_t: torch.Tensor, t_b: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The flow velocity at ``x_t`` (whatever the network predicts, see ``model.prediction``)."""
        return velocity_from_output(model(x_t, t_b, text), x_t, t_b, self.cfg.model.prediction)

    @property
    def sampling_model(self) -> VideoDiT:
        return self.ema if self.ema is not None else self.model

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        # each DDP rank draws its own timesteps / noise / caption dropout
        self._gen.manual_seed(self.cfg.seed + 1_000_003 * self.global_rank)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=batch["video"].shape[0])
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=False, on_step=True)
        return loss

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        g = generator or self._gen
        x0, text = batch["video"], batch["text"]
        B = x0.shape[0]
        drop = torch.rand(B, generator=g) < self.cfg.optim.caption_dropout
        if drop.any() and self.training:
            text = torch.where(drop.to(text.device)[:, None, None], self.tokenizer.null_like(text), text)
        o = self.cfg.optim
        t = sample_timesteps(B, o.timestep_sampling, g, x0.device, o.timestep_mean, o.timestep_std)
        noise = torch.randn(x0.shape, generator=g).to(x0.device, x0.dtype)
        return flow_loss(lambda x, tt: self.velocity(self.model, x, tt, text), x0, t, noise)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        g = torch.Generator().manual_seed(1234 + batch_idx)  # same noise every validation
        self.log("val/loss", self.loss(batch, g), prog_bar=True, batch_size=batch["video"].shape[0])

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            d = self.cfg.optim.ema_decay
            with torch.no_grad():
                for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                    pe.lerp_(pm.detach().to(pe.dtype), 1 - d)

    def configure_optimizers(self):
        o = self.cfg.optim
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "emb" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas))
        warm = max(1, o.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, text_bst: torch.Tensor, *, frames: int, height: int, width: int, seed: int,
                 steps: int | None = None, sampler: str | None = None, guidance: float | None = None) -> torch.Tensor:
        """Videos ``(B, S, F, 3, H, W)`` in ``[-1, 1]`` for caption ids ``text_bst``.

        Deterministic: the initial noise of sample ``b`` comes from a CPU generator seeded with
        ``seed + b``, so a sample does not depend on the batch it is drawn in."""
        sc = self.cfg.sample
        steps, sampler = steps or sc.steps, sampler or sc.sampler
        guidance = sc.guidance if guidance is None else guidance
        model = self.sampling_model
        was_training = model.training
        model.eval()
        B, S, _ = text_bst.shape
        noise = torch.stack([torch.randn((S, frames, 3, height, width), generator=torch.Generator().manual_seed(seed + b))
                             for b in range(B)]).to(self.device)
        text_bst = text_bst.to(self.device)
        null = self.tokenizer.null_like(text_bst)
        v = guided(lambda x, t: self.velocity(model, x, t, text_bst).float(),
                   lambda x, t: self.velocity(model, x, t, null).float(), guidance)
        out = integrate(v, noise, steps, sampler)
        model.train(was_training)
        return out.clamp(-1, 1)


class MultiShotVideoTask(VideoTask):
    """Multi-shot stories: interleaved ``text_s, video_s`` streams of ``data.shots`` shots."""

    task_name = "multi_shot"


class SingleShotVideoTask(VideoTask):
    """Single-shot clips: one caption then one shot's frames."""

    task_name = "single_shot"


TASK_CLASSES = {"multi_shot": MultiShotVideoTask, "single_shot": SingleShotVideoTask}


def build_task(cfg: TaskConfig, vocab: list[str]) -> VideoTask:
    return TASK_CLASSES[cfg.task](to_dict(cfg), list(vocab))


def _base_for(saved: dict, overrides: list[str]) -> dict:
    """The saved config, without its backend params when ``backend.name`` switches to another backend
    (a MoC checkpoint's ``top_k`` means nothing to ``dense``; only params given as overrides apply)."""
    with config_errors():
        given = OmegaConf.to_container(OmegaConf.from_dotlist(parse_overrides(overrides))).get("backend")
    name = given.get("name") if isinstance(given, dict) else None
    saved = OmegaConf.to_container(saved) if OmegaConf.is_config(saved) else dict(saved)
    backend = saved.get("backend") or {}
    if name is not None and name != backend.get("name"):
        saved = {**saved, "backend": {**backend, "name": name, "params": {}}}
    return saved


def load_task(checkpoint: str, overrides: list[str] | None = None) -> VideoTask:
    """A task from a checkpoint of ``mocbench train``; ``overrides`` (e.g. ``backend.name=moc``)
    change the saved config before the model is built (weights must still fit). Switching
    ``backend.name`` drops the saved backend's params."""
    ckpt = read_checkpoint(checkpoint)
    hp = ckpt["hyper_parameters"]
    cfg = load_task_config(base=_base_for(hp["config"], overrides or []), overrides=overrides)
    task = build_task(cfg, hp["vocab"])
    state = ckpt["state_dict"]
    if task.ema is not None and not any(k.startswith("ema.") for k in state):
        state = {**state, **{"ema." + k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}}
    task.load_state_dict({k: v for k, v in state.items() if task.ema is not None or not k.startswith("ema.")})
    return task
