"""Recovery by knowledge distillation: train a converted student to imitate its dense teacher on unlabelled inputs.

Loss per batch (``loss="kl"``, Hinton et al.): ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` over the last dim of the
logits; ``loss="mse"``: ``‖s − t‖² / ‖t‖²``. With ``features=True`` each replaced layer's output is matched too,
``Σ_l ‖s_l − t_l‖² / ‖t_l‖²`` averaged over the layers the student's surgery records name (modules found under
the same name in both models). AdamW over :func:`~surgeon.recovery.groups.param_groups` (no weight decay on the
structured diagonals) with a cosine-decayed learning rate (after an optional linear warm-up); the teacher is frozen
and runs in eval mode. With ``keep_best`` (the default) a share of the inputs is held out and the student state
with the lowest held-out output loss, the starting one included, is what the run returns
(:mod:`surgeon.recovery.best`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from surgeon.errors import ConfigError
from surgeon.recovery.best import BestState, split_held_out
from surgeon.recovery.config import DistillConfig
from surgeon.recovery.groups import param_groups
from surgeon.surgery.fit import call_with
from surgeon.surgery.progress import LazyProgress
from surgeon.surgery.record import SurgeryRecord, append_record, records
from surgeon.surgery.transform import Call, register_transform

TEACHER_CACHE_BYTES = 256 * 2**20   # held-out teacher logits kept between checks up to this size


def logits_of(output: Any) -> torch.Tensor:
    """The tensor a model's output stands for: itself, ``.logits`` (Hugging Face), or the first element."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f"cannot find logits in a model output of type {type(output).__name__}")


def output_loss(student: torch.Tensor, teacher: torch.Tensor, loss: str, temperature: float) -> torch.Tensor:
    """The distillation loss between two logits tensors of the same shape (..., classes)."""
    if student.shape != teacher.shape:
        raise ConfigError(f"student and teacher outputs differ in shape: {tuple(student.shape)} vs "
                          f"{tuple(teacher.shape)}; distillation needs models of the same task")
    s = student.float().reshape(-1, student.shape[-1])
    t = teacher.float().reshape(-1, teacher.shape[-1])
    if loss == "kl":
        log_s = torch.log_softmax(s / temperature, dim=-1)
        log_t = torch.log_softmax(t / temperature, dim=-1)
        return nn.functional.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature ** 2
    return (s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)


def replaced_layers(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Names of the modules the student's surgeries replaced that both models have."""
    names = [c.name for r in records(student) if r.transform == "convert" for c in r.changes if c.source == "module"]
    have_s, have_t = dict(student.named_modules()), dict(teacher.named_modules())
    return [n for n in dict.fromkeys(names) if n in have_s and n in have_t]


class _Taps:
    """Forward hooks keeping the latest output of each named module."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._keeper(n)) for n in names]

    def _keeper(self, name: str):
        def keep(module: nn.Module, args: Any, out: Any) -> None:
            self.outputs[name] = logits_of(out)
        return keep

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _batches(data: torch.Tensor | Sequence[Any], batch_size: int, gen: torch.Generator) -> Any:
    if isinstance(data, torch.Tensor):
        index = torch.randint(0, data.shape[0], (min(batch_size, data.shape[0]),), generator=gen)
        return data[index]
    return data[int(torch.randint(0, len(data), (1,), generator=gen))]


class Distiller:
    """Resumable distillation state: ``step()`` one batch, ``state_dict()`` / ``load_state_dict()`` to resume."""

    def __init__(self, student: nn.Module, teacher: nn.Module, data: torch.Tensor | Sequence[Any],
                 config: DistillConfig) -> None:
        if len(data) == 0:
            raise ConfigError("distillation data is empty", field="data", rule="is empty")
        self.student, self.teacher, self.config = student, teacher, config
        self.data, self.held = split_held_out(data, config.held_out if config.keep_best else 0.0, config.seed)
        self.best = BestState()
        self.steps = config.steps
        self.check_every = max(1, config.steps // config.checks)
        self.layers = replaced_layers(student, teacher) if config.features else []
        groups = param_groups(student, config.lr, config.weight_decay, multipliers=config.multipliers)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.gen = torch.Generator()
        self.gen.manual_seed(config.seed)
        self.done = 0
        self.losses: list[float] = []
        self._held_targets: list[torch.Tensor] | None = None
        self._check_fits(data)

    def _check_fits(self, data: torch.Tensor | Sequence[Any]) -> None:
        """One batch through both models, so that data of the wrong shape fails with one clear line."""
        batch = data[:2] if isinstance(data, torch.Tensor) else data[0]
        with torch.no_grad():
            for label, model in (("teacher", self.teacher), ("student", self.student)):
                try:
                    output = logits_of(call_with(model, batch))
                except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                    shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ConfigError(f"distillation data (rows of shape {shape}) does not fit the {label}: "
                                      f"{first}") from exc
                if label == "teacher":
                    target = output
            output_loss(output, target, self.config.loss, self.config.temperature)

    def _loss(self, batch: Any, student_taps: _Taps, teacher_taps: _Taps) -> torch.Tensor:
        with torch.no_grad():
            target = logits_of(call_with(self.teacher, batch))
        config = self.config
        value = output_loss(logits_of(call_with(self.student, batch)), target, config.loss, config.temperature)
        if self.layers:
            parts = [output_loss(student_taps.outputs[n], teacher_taps.outputs[n].detach(), "mse", 1.0)
                     for n in self.layers]
            value = value + config.feature_weight * torch.stack(parts).mean()
        return value

    def _lr_factor(self) -> float:
        """Linear warm-up over ``warmup`` of the steps, then cosine decay to zero at the last step."""
        warm = round(self.config.warmup * self.steps)
        if self.done < warm:
            return (self.done + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (self.done - warm) / max(1, self.steps - warm)))

    @torch.no_grad()
    def held_out_loss(self) -> float:
        """The output loss (no feature terms) on the held-out inputs, averaged over rows (or batches).

        The frozen teacher's logits on them are computed at the first check and kept while they fit in
        ``TEACHER_CACHE_BYTES`` (a full-vocabulary LM's may not: then they are recomputed at every check)."""
        config = self.config
        parts = self.held.split(config.batch_size) if isinstance(self.held, torch.Tensor) else self.held
        cached, fresh, size = self._held_targets, [], 0
        total, weight = 0.0, 0
        for i, part in enumerate(parts):
            rows = part.shape[0] if isinstance(part, torch.Tensor) else 1
            target = cached[i] if cached is not None else logits_of(call_with(self.teacher, part))
            if cached is None and fresh is not None:
                size += target.numel() * target.element_size()
                if size <= TEACHER_CACHE_BYTES:
                    fresh.append(target)
                else:
                    fresh = None
            value = output_loss(logits_of(call_with(self.student, part)), target, config.loss, config.temperature)
            total, weight = total + float(value) * rows, weight + rows
        if cached is None and fresh is not None:
            self._held_targets = fresh
        return total / weight

    def _check(self) -> None:
        if self.config.keep_best:
            self.best.offer(self.done, self.held_out_loss(), self.student)

    def step(self, student_taps: _Taps, teacher_taps: _Taps) -> float:
        if self.config.keep_best and not self.best.history:
            self._check()      # the starting student is a candidate: distillation never returns a worse one
        factor = self._lr_factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        batch = _batches(self.data, self.config.batch_size, self.gen)
        with torch.enable_grad():
            value = self._loss(batch, student_taps, teacher_taps)
            self.optimizer.zero_grad(set_to_none=True)
            value.backward()
        self.optimizer.step()
        self.done += 1
        self.losses.append(float(value.detach()))
        if self.done % self.check_every == 0 or self.done == self.steps:
            self._check()
        return self.losses[-1]

    def run(self, steps: int | None = None, *, quiet: bool = False) -> list[float]:
        """Train until ``steps`` more steps (default: to the end) have run; returns the losses of this call."""
        until = self.steps if steps is None else min(self.steps, self.done + steps)
        modes = {m: m.training for m in (*self.student.modules(), *self.teacher.modules())}
        flags = [p.requires_grad for p in self.teacher.parameters()]
        self.teacher.eval()
        self.student.eval()   # imitation of a deterministic map: dropout off, same as at inference
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        student_taps, teacher_taps = _Taps(self.student, self.layers), _Taps(self.teacher, self.layers)
        start = len(self.losses)
        try:
            with LazyProgress(until - self.done, "distilling", quiet=quiet) as bar:
                first = self.done
                while self.done < until:
                    value = self.step(student_taps, teacher_taps)
                    bar.update(self.done - first, description=f"distilling (loss {value:.4g})")
            if self.done == self.steps and self.config.keep_best:
                self.best.restore(self.student)
        finally:
            student_taps.close()
            teacher_taps.close()
            for p, flag in zip(self.teacher.parameters(), flags):
                p.requires_grad_(flag)
            for module, mode in modes.items():
                module.training = mode
        return self.losses[start:]

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "losses": list(self.losses), "optimizer": self.optimizer.state_dict(),
                "generator": self.gen.get_state(), "best": self.best.state_dict(),
                "student": {k: v.clone() for k, v in self.student.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.done, self.losses = int(state["done"]), list(state["losses"])
        if "best" in state:
            self.best.load_state_dict(state["best"])

    def record(self) -> SurgeryRecord:
        first, last = self.losses[:10], self.losses[-10:]
        note = (f"distill: {self.done} steps, loss {sum(first) / max(1, len(first)):.4g} (first 10) -> "
                f"{sum(last) / max(1, len(last)):.4g} (last 10); features matched: {len(self.layers)} layers")
        notes = [note]
        history = self.best.history
        if history:
            notes.append(f"held-out {self.config.loss} on {len(self.held)} {_unit(self.held)}: {history[0][1]:.4g} "
                         f"(start) -> {history[-1][1]:.4g} (step {history[-1][0]}); kept the student of step "
                         f"{self.best.step} ({self.best.loss:.4g})")
        return _record(self.config, notes)


def _unit(data: torch.Tensor | Sequence[Any]) -> str:
    return "rows" if isinstance(data, torch.Tensor) else "batches"


def _record(config: DistillConfig, notes: list[str]) -> SurgeryRecord:
    return SurgeryRecord(transform="distill", config_type=type(config).__name__, config=config.to_dict(),
                         warnings=notes)


def distill(student: nn.Module, teacher: nn.Module, data: torch.Tensor | Sequence[Any] | Iterable[Any],
            config: DistillConfig | None = None, *, state: dict[str, Any] | None = None, quiet: bool = False,
            **options: Any) -> nn.Module:
    """Train ``student`` in place to imitate ``teacher`` on unlabelled ``data`` and return it with a record.

    ``data``: a tensor of inputs (rows sampled in batches of ``batch_size``) or a sequence of ready batches
    (tensors, tuples of positional args, or dicts of keyword args). Options (``steps``, ``lr``, ``loss="kl"`` for
    logits or ``"mse"``, ``temperature``, ``features``, ``feature_weight``, ``batch_size``, ``weight_decay``,
    ``multipliers``, ``warmup``, ``keep_best``, ``held_out``, ``checks``, ``seed``) are the fields of
    :class:`DistillConfig`, given as keywords or as ``config``. ``state``: a :meth:`Distiller.state_dict` to resume
    from. For a loop of your own, use :class:`Distiller`.
    """
    if config is not None and options:
        raise ConfigError("distill: pass options inside the config or as keywords, not both")
    config = config if config is not None else DistillConfig.from_options(**options)
    if not isinstance(data, (torch.Tensor, Sequence)):
        data = list(data)
    distiller = Distiller(student, teacher, data, config)
    if state is not None:
        distiller.load_state_dict(state)
    distiller.run(quiet=quiet)
    append_record(student, distiller.record())
    return student


@register_transform(DistillConfig)
def _replay_distill(model: nn.Module, config: DistillConfig, call: Call) -> nn.Module:
    """Recipe replay of a distillation step: the structure is unchanged and the weights come from the file, so
    only the record is appended (a reloaded model's recipe stays equal to the saved one's)."""
    append_record(model, _record(config, []))
    return model
