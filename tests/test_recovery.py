"""Distillation (surgeon.distill), optimiser groups and parameter budgets on small models."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

import surgeon
from surgeon.errors import ConfigError
from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.lowrank import LowRankLinear
from surgeon.recovery.config import DistillConfig
from surgeon.recovery.distill import Distiller, output_loss
from surgeon.recovery.groups import param_groups
from surgeon.surgery.record import records


def _teacher() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 6)).eval()


def _held_kl(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(output_loss(student(x), teacher(x), "kl", 1.0))


def test_distillation_lowers_held_out_kl_and_is_deterministic() -> None:
    teacher, data, held = _teacher(), torch.randn(512, 16), torch.randn(128, 16)
    students = []
    for _ in range(2):
        student = surgeon.convert(teacher, "acdc", depth=2, min_features=16, seed=0)
        before = _held_kl(student, teacher, held)
        surgeon.distill(student, teacher, data, steps=40, lr=3e-3, quiet=True)
        assert _held_kl(student, teacher, held) < 0.5 * before
        students.append(student)
    for a, b in zip(students[0].state_dict().values(), students[1].state_dict().values()):
        assert torch.equal(a, b)
    assert records(students[0])[-1].transform == "distill"


def test_distillation_resumes_exactly(tmp_path) -> None:
    teacher, data = _teacher(), torch.randn(256, 16)
    straight = surgeon.convert(teacher, "lowrank", rank=4, min_features=16, seed=0)
    surgeon.distill(straight, teacher, data, steps=12, quiet=True)
    halves = surgeon.convert(teacher, "lowrank", rank=4, min_features=16, seed=0)
    first = Distiller(halves, teacher, data, DistillConfig(steps=12))
    first.run(6, quiet=True)
    state = first.state_dict()
    second = Distiller(halves, teacher, data, DistillConfig(steps=12))
    second.load_state_dict(state)
    second.run(quiet=True)
    for a, b in zip(straight.state_dict().values(), halves.state_dict().values()):
        assert torch.equal(a, b)
    # a distilled model saves and reloads bit-exactly; the distill step is part of its recipe
    surgeon.save(straight, tmp_path / "s.safetensors")
    back = surgeon.load(tmp_path / "s.safetensors", _teacher())
    assert [r.transform for r in records(back)] == ["convert", "distill"]
    for a, b in zip(straight.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_keep_best_returns_the_start_when_training_only_hurts() -> None:
    """An absurd learning rate ruins the student; with keep_best (the default) the student returned is the one given,
    bit for bit, and without it the held-out KL (measured here by hand on inputs no run trains on) is far worse."""
    teacher, data, held = _teacher(), torch.randn(256, 16), torch.randn(128, 16)
    start = surgeon.convert(teacher, "lowrank", rank=8, min_features=16, seed=0)
    kept, ruined = (surgeon.convert(teacher, "lowrank", rank=8, min_features=16, seed=0) for _ in range(2))
    surgeon.distill(kept, teacher, data, steps=8, lr=50.0, quiet=True)
    surgeon.distill(ruined, teacher, data, steps=8, lr=50.0, keep_best=False, quiet=True)
    for a, b in zip(start.state_dict().values(), kept.state_dict().values()):
        assert torch.equal(a, b)
    assert _held_kl(ruined, teacher, held) > 2 * _held_kl(start, teacher, held)
    note = records(kept)[-1].warnings[-1]
    assert "kept the student of step 0" in note and "on 26 rows" in note


def test_keep_best_holds_out_rows_it_never_trains_on() -> None:
    data = torch.arange(50.0).view(25, 2)
    config = DistillConfig(steps=3, held_out=0.2, seed=4)
    distiller = Distiller(surgeon.convert(_pair_teacher(), "lowrank", rank=1, min_features=2), _pair_teacher(),
                          data, config)
    train = {tuple(r) for r in distiller.data.tolist()}
    held = {tuple(r) for r in distiller.held.tolist()}
    assert len(held) == 5 and len(train) == 20 and not train & held
    assert train | held == {tuple(r) for r in data.tolist()}
    batches = [torch.randn(4, 2) for _ in range(3)]
    distiller = Distiller(surgeon.convert(_pair_teacher(), "lowrank", rank=1, min_features=2), _pair_teacher(),
                          batches, config)
    assert len(distiller.held) == 1 and len(distiller.data) == 2
    assert not any(distiller.held[0] is b for b in distiller.data)


def _pair_teacher() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


def test_warmup_rises_linearly_then_decays() -> None:
    teacher = _teacher()
    student = surgeon.convert(teacher, "lowrank", rank=4, min_features=16)
    distiller = Distiller(student, teacher, torch.randn(64, 16), DistillConfig(steps=10, lr=1.0, warmup=0.4))
    rates = []
    for _ in range(10):
        distiller.run(1, quiet=True)
        rates.append(distiller.optimizer.param_groups[0]["lr"])
    expected = [0.25, 0.5, 0.75, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert rates == pytest.approx(expected)
    with pytest.raises(ConfigError, match="warmup"):
        DistillConfig(warmup=1.0)


def test_distill_rejects_bad_input() -> None:
    teacher = _teacher()
    student = surgeon.convert(teacher, "lowrank", rank=4, min_features=16)
    with pytest.raises(ConfigError, match="empty"):
        surgeon.distill(student, teacher, torch.empty(0, 16), steps=2)
    with pytest.raises(ConfigError, match="loss"):
        surgeon.distill(student, teacher, torch.randn(8, 16), steps=2, loss="hinge")
    other = nn.Sequential(nn.Linear(16, 3))
    with pytest.raises(ConfigError, match="shape"):
        surgeon.distill(student, other, torch.randn(8, 16), steps=2, quiet=True)


def test_param_groups_spare_the_diagonals() -> None:
    model = nn.Sequential(ACDCLinear(8, 8, depth=2), nn.Linear(8, 4))
    groups = {g["name"]: g for g in param_groups(model, 1e-3, 0.1)}
    assert groups["diagonals"]["weight_decay"] == 0 and groups["dense"]["weight_decay"] == 0.1
    assert {id(p) for p in groups["diagonals"]["params"]} == {id(model[0].a), id(model[0].d), id(model[0].b)}
    thesis = {g["name"]: g for g in param_groups(model, 1e-3, 0.1, multipliers=True)}
    assert thesis["acdc.a"]["lr"] == pytest.approx(24e-3) and thesis["acdc.d"]["lr"] == pytest.approx(12e-3)
    counted = sum(len(g["params"]) for g in thesis.values())
    assert counted == len(list(model.parameters()))


def test_budget_spends_about_the_fraction_and_replays(tmp_path) -> None:
    teacher = _teacher()
    with torch.no_grad():   # the second layer nearly rank 3: a budget should give it fewer ranks than the first
        teacher[2].weight.copy_(torch.randn(64, 3) @ torch.randn(3, 64) / 8 + 1e-3 * torch.randn(64, 64))
    calibration = [torch.randn(128, 16) for _ in range(4)]
    out = surgeon.convert(teacher, "lowrank", budget=0.25, min_features=16, init="fit", calibration=calibration,
                          quiet=True)
    dense = sum(teacher[i].weight.numel() + teacher[i].bias.numel() for i in (0, 2))
    kept = sum(p.numel() for i in (0, 2) for p in out[i].parameters())
    assert isinstance(out[0], LowRankLinear) and kept <= 0.25 * dense
    assert kept >= 0.15 * dense
    assert out[2].rank < out[0].rank
    assert records(out)[-1].config["rank"] == {"0": out[0].rank, "2": out[2].rank}
    surgeon.save(out, tmp_path / "b.safetensors")
    back = surgeon.load(tmp_path / "b.safetensors", _teacher())
    assert back[2].rank == out[2].rank


def test_acdc_budget_records_depths_that_replay(tmp_path) -> None:
    teacher = _teacher()
    calibration = [torch.randn(128, 16) for _ in range(2)]
    out = surgeon.convert(teacher, "acdc", budget=0.2, min_features=16, init="fit", calibration=calibration,
                          quiet=True)
    depths = records(out)[-1].config["depth"]
    assert set(depths) == {"0", "2"} and depths == {"0": out[0].depth, "2": out[2].depth}
    dense = sum(teacher[i].weight.numel() + teacher[i].bias.numel() for i in (0, 2))
    assert sum(p.numel() for i in (0, 2) for p in out[i].parameters()) <= 0.2 * dense
    surgeon.save(out, tmp_path / "a.safetensors")
    back = surgeon.load(tmp_path / "a.safetensors", _teacher())
    assert (back[0].depth, back[2].depth) == (out[0].depth, out[2].depth)


def _count_teacher_rows(teacher: nn.Module) -> list[int]:
    seen: list[int] = []
    teacher.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    return seen


@pytest.mark.parametrize("bound, teacher_runs", [(None, 1), (0, 4)])
def test_held_out_teacher_logits_are_cached_within_their_bound(monkeypatch, bound, teacher_runs) -> None:
    """Four checks: the frozen teacher sees the held-out rows once when its logits fit the cache bound, at every
    check when they do not; either way each check's loss is the KL written out by hand on those rows."""
    if bound is not None:
        monkeypatch.setattr(sys.modules[Distiller.__module__], "TEACHER_CACHE_BYTES", bound)
    teacher = _teacher()
    student = surgeon.convert(teacher, "lowrank", rank=8, min_features=16, seed=0)
    distiller = Distiller(student, teacher, torch.randn(200, 16), DistillConfig(steps=3, held_out=0.2, seed=1,
                                                                                     temperature=1.0))
    seen = _count_teacher_rows(teacher)
    with torch.no_grad():
        losses = [distiller.held_out_loss() for _ in range(4)]
        t, s = teacher(distiller.held), student(distiller.held)
    expected = float((t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean())
    assert sum(seen[:-1]) == teacher_runs * 40
    assert losses == pytest.approx([expected] * 4, rel=1e-5)
