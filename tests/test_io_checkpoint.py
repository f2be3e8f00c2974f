"""safetensors checkpoints with a surgery recipe: bit-exact round trips, ties, half storage, clear refusals."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors import safe_open
from torch import nn

from surgeon.io.checkpoint import CheckpointError, file_size, load, save
from surgeon.layers import ACDCLinear
from surgeon.surgery.record import SurgeryRecord, append_record, records


@pytest.fixture
def convert():
    """The real ``surgeon.surgery.convert.convert`` (recipes replay through the checkpoint's registry)."""
    from surgeon.surgery.convert import convert as real

    return real


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(48, 100), nn.ReLU(), nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 10))


def _perturb(model: nn.Module) -> None:
    """Move every floating parameter/buffer away from its init, as training would."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.add_(0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype))


@pytest.mark.parametrize("linear, kwargs", [
    ("acdc", {"depth": 4}),
    ("acdc", {"depth": 3, "activation": "tanh"}),
    ("fastfood", {}),
    ("fastfood", {"adaptive": False}),
])
def test_round_trip_is_bit_exact(tmp_path, convert, linear, kwargs):
    model = convert(_mlp(0), linear, include=["0", "2"], seed=7, **kwargs)
    _perturb(model)
    path = tmp_path / "model.safetensors"
    written = save(model, path)
    assert written == file_size(path) == os.path.getsize(path)
    fresh = _mlp(99)                         # different weights: every number must come from the file
    rebuilt = load(path, fresh)
    x = torch.randn(5, 48)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    kinds = {type(m).__name__ for m in rebuilt.modules()}
    assert ("ACDCLinear" if linear == "acdc" else "FastfoodLinear") in kinds
    assert isinstance(rebuilt[4], nn.Linear)  # not selected, not converted
    assert [r.to_dict() for r in records(rebuilt)] == [r.to_dict() for r in records(model)]
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    # loading into the converted model itself skips the steps it already carries
    again = convert(_mlp(3), linear, include=["0", "2"], seed=7, **kwargs)
    with torch.no_grad():
        assert torch.equal(load(path, again)(x), model(x))
    # ... but a model carrying a different surgery is refused
    other = convert(_mlp(3), linear, include=["0"], seed=7, **kwargs)
    with pytest.raises(CheckpointError, match="already carries surgeries"):
        load(path, other)


def test_metadata_holds_the_recipe(tmp_path, convert):
    model = convert(_mlp(0), "acdc", include=["2"], depth=5, seed=3, activation="relu")
    path = tmp_path / "m.safetensors"
    save(model, path)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        perm_dtype = handle.get_tensor("2.perms").dtype
    assert meta["format"] == "pt"
    assert meta["surgeon.version"]
    recipe = json.loads(meta["surgeon.recipe"])
    assert len(recipe) == 1 and recipe[0]["transform"] == "convert"
    assert recipe[0]["selected"] == ["2"]
    assert recipe[0]["config_type"] == "ACDCConfig"
    assert recipe[0]["config"]["depth"] == 5 and recipe[0]["config"]["seed"] == 3
    assert recipe[0]["changes"][0]["config"]["depth"] == 5
    assert perm_dtype == torch.int64


def test_compressed_file_is_smaller_than_dense(tmp_path, convert):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))
    save(dense, tmp_path / "dense.safetensors")
    model = convert(dense, "acdc", include=["0", "2"], depth=4, seed=0)
    save(model, tmp_path / "acdc.safetensors")
    dense_bytes = file_size(tmp_path / "dense.safetensors")
    acdc_bytes = file_size(tmp_path / "acdc.safetensors")
    # 2·(512² + 512) fp32 weights vs 2·(3·4·512 fp32 + 3·512 int64) numbers; header/metadata are small.
    assert dense_bytes > 4 * 2 * 512 * 512
    assert acdc_bytes < dense_bytes / 15


class _Tied(nn.Module):
    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.Linear(16, 20, bias=False)
        if tie:
            self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.mid(self.embed(tokens))))


def test_tied_weights_are_written_once_and_retied(tmp_path, convert):
    torch.manual_seed(0)
    model = convert(_Tied(tie=True), "acdc", include=["mid"], depth=2, seed=1)
    _perturb(model)
    path = tmp_path / "tied.safetensors"
    save(model, path)
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        aliases = json.loads(handle.metadata()["surgeon.aliases"])
    assert aliases == {"out.weight": "embed.weight"}
    assert "out.weight" not in keys and "embed.weight" in keys
    rebuilt = load(path, _Tied(tie=False))   # a model that lost the tie gets it back
    assert rebuilt.out.weight is rebuilt.embed.weight
    tokens = torch.randint(0, 20, (3, 7))
    with torch.no_grad():
        assert torch.equal(rebuilt(tokens), model(tokens))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_keeps_integer_buffers_and_loads_as_fp32(tmp_path, convert, dtype):
    model = convert(_mlp(0), "acdc", include=["0", "2"], depth=4, seed=2)
    _perturb(model)
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save(model, full)
    save(model, half, dtype=dtype)
    with safe_open(str(half), framework="pt") as handle:
        assert handle.get_tensor("0.a").dtype == dtype
        assert handle.get_tensor("0.perms").dtype == torch.int64
        assert handle.get_tensor("4.weight").dtype == dtype
        assert handle.metadata()["surgeon.dtype"] == str(dtype).removeprefix("torch.")
    assert file_size(half) < 0.75 * file_size(full)
    rebuilt = load(half, _mlp(5))
    assert rebuilt[0].a.dtype == torch.float32
    assert torch.equal(rebuilt[0].perms, model[0].perms)
    assert torch.equal(rebuilt[0].a, model[0].a.to(dtype).float())   # exactly the rounded values
    x = torch.randn(4, 48)
    with torch.no_grad():
        ref, out = model(x), rebuilt(x)
    assert not torch.equal(out, ref)
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_refuses_a_model_that_does_not_fit(tmp_path, convert):
    model = convert(_mlp(0), "acdc", include=["2"], depth=3, seed=0)
    path = tmp_path / "m.safetensors"
    save(model, path)
    # recipe step names a module the model lacks
    other = nn.Sequential(nn.Linear(48, 100), nn.ReLU())
    with pytest.raises(CheckpointError, match=r"needs module '2'"):
        load(path, other)
    # same structure, different width: the first mismatching tensor is named
    torch.manual_seed(0)
    wider = nn.Sequential(nn.Linear(48, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    with pytest.raises(CheckpointError, match=r"shape mismatch for '0.weight'") as info:
        load(path, wider)
    assert "\n" not in str(info.value)
    # a model with an extra layer: a key the file lacks
    longer = nn.Sequential(*_mlp(0), nn.Linear(10, 10))
    with pytest.raises(CheckpointError, match=r"missing key '5.weight'"):
        load(path, longer)
    # ... which strict=False tolerates
    assert isinstance(load(path, nn.Sequential(*_mlp(0), nn.Linear(10, 10)), strict=False)[2], ACDCLinear)


def test_unexpected_key_and_unknown_transform(tmp_path):
    plain = _mlp(0)
    path = tmp_path / "plain.safetensors"
    save(plain, path)
    shorter = nn.Sequential(nn.Linear(48, 100), nn.ReLU(), nn.Linear(100, 64))
    with pytest.raises(CheckpointError, match=r"unexpected key '4\.(weight|bias)'"):
        load(path, shorter)
    # a plain (recipe-less) file loads into the same architecture bit for bit
    rebuilt = load(path, _mlp(8))
    x = torch.randn(2, 48)
    assert torch.equal(rebuilt(x), plain(x))
    model = _mlp(0)
    append_record(model, SurgeryRecord(transform="sharpen", selected=["0"]))
    save(model, tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match=r"'sharpen' is not a known transform"):
        load(tmp_path / "odd.safetensors", _mlp(0))


def test_refuses_corrupt_and_truncated_files(tmp_path, convert):
    model = convert(_mlp(0), "fastfood", include=["0"], seed=0)
    path = tmp_path / "m.safetensors"
    save(model, path)
    blob = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(blob[: len(blob) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
            load(bad, _mlp(0))
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope.safetensors", _mlp(0))


def test_interrupted_save_leaves_previous_file_intact(tmp_path, monkeypatch, convert):
    model = convert(_mlp(0), "acdc", include=["0"], depth=2, seed=0)
    path = tmp_path / "m.safetensors"
    save(model, path)
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    _perturb(model)
    with pytest.raises(KeyboardInterrupt):
        save(model, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]   # no temporary file left behind


def test_refuses_uninitialised_lazy_modules(tmp_path):
    model = nn.Sequential(nn.LazyLinear(4))
    with pytest.raises(CheckpointError, match="uninitialised lazy"):
        save(model, tmp_path / "lazy.safetensors")
    assert not os.listdir(tmp_path)


class _Seq(nn.Module):
    """Count-unique-elements style model (thesis Table 4.5): LSTM, time-average pooling, sigmoid MLP head."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lstm = nn.LSTM(6, 16, batch_first=True)
        self.fc1 = nn.Linear(16, 80)
        self.fc2 = nn.Linear(80, 80)
        self.out = nn.Linear(80, 3)
        self.act1, self.act2 = nn.Sigmoid(), nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        return self.out(self.act2(self.fc2(self.act1(self.fc1(h.mean(1))))))


@pytest.mark.parametrize("noise", ["noisify", "mollify"])
def test_noisy_and_mollified_models_round_trip(tmp_path, convert, noise):
    from surgeon.surgery.mollify import mollify
    from surgeon.surgery.noisify import noisify

    model = convert(_Seq(0), "fastfood", include=["fc2"], seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # fx cannot trace the LSTM output unpacking: module-tree fallback
        model = noisify(model, "nah") if noise == "noisify" else mollify(model, c=0.5)
    assert {"lstm", "act1", "act2"} <= set(records(model)[-1].selected)
    x = torch.randn(4, 7, 6)
    model(x)                    # materialise any lazily sized per-unit parameter
    _perturb(model)
    model.eval()
    path = tmp_path / f"{noise}.safetensors"
    save(model, path)
    assert [r.transform for r in records(model)] == ["convert", noise]
    rebuilt = load(path, _Seq(5)).eval()
    assert [r.transform for r in records(rebuilt)] == ["convert", noise]
    assert type(rebuilt.lstm).__name__ != "LSTM"          # the recurrent module was rebuilt as a noisy one
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
