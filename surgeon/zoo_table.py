"""The model-zoo table: real architectures from timm, torchvision and transformers, before → after ``convert``.

``python -m surgeon.zoo_table`` builds every model offline from its configuration (random weights, nothing
downloaded), converts it with ACDC and with Fastfood, and prints a Markdown table of parameters before → after,
converted sites and the skips with their reasons. ``--size tiny`` uses the small configurations the test suite
runs (tests/test_zoo.py); ``--size full`` (default) the standard sizes.

Each entry says how to build the model, how to make an example input and which ``convert`` options it needs
(``targets={"linear", "conv1x1"}`` for the convolutional nets whose bulk is pointwise convolutions). Families
whose library is not installed are left out of the table with a note.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

import surgeon
from surgeon.zoo import LSTMLanguageModel

Inputs = tuple[Any, ...]


@dataclass(frozen=True)
class ZooModel:
    """One architecture: how to build it at a size, feed it, and convert it."""

    name: str
    family: str                                      # "timm", "torchvision", "transformers", "torch"
    build: Callable[[str], nn.Module]                # size ("tiny" | "full") -> freshly initialised model
    inputs: Callable[[str], Inputs]                  # size -> positional example inputs (batch 2)
    options: dict[str, Any] = field(default_factory=dict)          # convert() options for every size
    tiny_options: dict[str, Any] = field(default_factory=dict)     # extra options at the tiny size


def output_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model's output (HF ``ModelOutput``s: logits or last hidden state; tuples: first)."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)):
        return output_tensor(output[0])
    raise TypeError(f"cannot find the output tensor of {type(output).__name__}")


def _images(size: str) -> Inputs:
    side = 32 if size == "tiny" else 224
    return (torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0)),)


def _alexnet_images(size: str) -> Inputs:
    side = 64 if size == "tiny" else 224
    return (torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0)),)


def _tokens(vocab: int, length: int = 12) -> Callable[[str], Inputs]:
    def make(size: str) -> Inputs:
        return (torch.randint(0, vocab if size == "tiny" else 1000, (2, length),
                              generator=torch.Generator().manual_seed(0)),)
    return make


def _seq2seq_tokens(size: str) -> Inputs:
    tokens = _tokens(96)(size)[0]
    return tokens, torch.ones_like(tokens), tokens[:, :7]     # input_ids, attention_mask, decoder_input_ids


# -- timm --------------------------------------------------------------------------------------------------------
def _vit(size: str) -> nn.Module:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if size == "full":
        return timm.create_model("vit_base_patch16_224", pretrained=False)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)


def _mixer(size: str, resmlp: bool = False) -> nn.Module:
    import timm
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    if size == "full":
        return timm.create_model("resmlp_12_224" if resmlp else "mixer_b16_224", pretrained=False)
    extra: dict[str, Any] = {}
    if resmlp:
        extra = {"mlp_ratio": 4, "block_layer": partial(ResBlock, init_values=1e-5), "norm_layer": Affine}
    return MlpMixer(img_size=32, patch_size=8, embed_dim=64, num_blocks=2, num_classes=10, **extra)


def _convnext(size: str) -> nn.Module:
    import timm
    from timm.models.convnext import ConvNeXt

    if size == "full":
        return timm.create_model("convnext_tiny", pretrained=False)
    return ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=10)


# -- torchvision -------------------------------------------------------------------------------------------------
def _narrow_classifier(model: nn.Module, in_features: int, hidden: int, classes: int) -> None:
    """torchvision's AlexNet/VGG classifier (same module names) with ``hidden`` units instead of 4096."""
    model.classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, classes))


def _alexnet(size: str) -> nn.Module:
    from torchvision.models import alexnet

    if size == "full":
        return alexnet()
    with torch.device("meta"):      # the 4096-wide classifier is never allocated, only replaced
        model = alexnet(num_classes=10)
    model.features = model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    _narrow_classifier(model, 256 * 6 * 6, 128, 10)
    return model


def _vgg(size: str) -> nn.Module:
    from torchvision.models import VGG, vgg16
    from torchvision.models.vgg import make_layers

    if size == "full":
        return vgg16()
    features = make_layers([16, "M", 32, "M", 64, "M"], batch_norm=True)
    with torch.device("meta"):
        model = VGG(nn.Identity(), num_classes=10)
    model.features = features
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    _narrow_classifier(model, 64 * 7 * 7, 128, 10)
    return model


def _mobilenet(size: str) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small() if size == "full" else mobilenet_v3_small(num_classes=10, width_mult=0.5)


def _resnet18(size: str) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18() if size == "full" else resnet18(num_classes=10)


# -- transformers ------------------------------------------------------------------------------------------------
def _hf(config_name: str, model_name: str, tiny: dict[str, Any], full: dict[str, Any]) -> Callable[[str], nn.Module]:
    def build(size: str) -> nn.Module:
        import transformers

        transformers.logging.set_verbosity_error()
        config = getattr(transformers, config_name)(**(tiny if size == "tiny" else full))
        return getattr(transformers, model_name)(config)
    return build


_TINY_TOKENS = {"vocab_size": 96, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}
_BERT = _hf("BertConfig", "BertForSequenceClassification",
            {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
             "max_position_embeddings": 32, **_TINY_TOKENS}, {})
_GPT2 = _hf("GPT2Config", "GPT2LMHeadModel",
            {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 32, **_TINY_TOKENS}, {})
_LLAMA = _hf("LlamaConfig", "LlamaForCausalLM",
             {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "max_position_embeddings": 32, **_TINY_TOKENS},
             # a Llama-160M-sized model (the default LlamaConfig is 7B)
             {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "num_key_value_heads": 12, "vocab_size": 32000})
_T5 = _hf("T5Config", "T5ForConditionalGeneration",
          {"d_model": 64, "d_ff": 128, "d_kv": 32, "num_layers": 1, "num_heads": 2, "decoder_start_token_id": 0,
           **_TINY_TOKENS}, {})      # the default T5Config is t5-small


def _lstm_lm(size: str) -> nn.Module:
    return LSTMLanguageModel(vocab=96, embed=64, hidden=64, layers=1) if size == "tiny" else LSTMLanguageModel()


_POINTWISE = {"targets": ("linear", "conv1x1")}
_SMALL = {"min_features": 16}

MODELS: tuple[ZooModel, ...] = (
    ZooModel("ViT", "timm", _vit, _images),
    ZooModel("MLP-Mixer", "timm", _mixer, _images, tiny_options=_SMALL),
    ZooModel("ResMLP", "timm", partial(_mixer, resmlp=True), _images),
    ZooModel("ConvNeXt", "timm", _convnext, _images, tiny_options=_SMALL),
    ZooModel("AlexNet", "torchvision", _alexnet, _alexnet_images),
    ZooModel("VGG", "torchvision", _vgg, _images),
    ZooModel("MobileNetV3-small", "torchvision", _mobilenet, _images, options=_POINTWISE, tiny_options=_SMALL),
    ZooModel("ResNet-18", "torchvision", _resnet18, _images, options=_POINTWISE),
    ZooModel("BERT", "transformers", _BERT, _tokens(96)),
    ZooModel("GPT-2", "transformers", _GPT2, _tokens(96)),
    ZooModel("Llama", "transformers", _LLAMA, _tokens(96)),
    ZooModel("T5", "transformers", _T5, _seq2seq_tokens),
    ZooModel("LSTM LM", "torch", _lstm_lm, _tokens(96)),
)


def by_name(name: str) -> ZooModel:
    return next(m for m in MODELS if m.name == name)


def convert_options(entry: ZooModel, size: str, kind: str) -> dict[str, Any]:
    """The convert() keyword arguments the zoo uses for ``entry`` (depth 4 ACDC cascades in the tiny zoo)."""
    options: dict[str, Any] = {"seed": 0, **entry.options}
    if size == "tiny":
        options.update(entry.tiny_options)
        if kind == "acdc":
            options["depth"] = 4
    return options


def convert_entry(entry: ZooModel, size: str, kind: str, model: nn.Module | None = None) -> tuple[nn.Module, nn.Module]:
    """(original, converted) for one zoo entry; warnings about the module-tree fallback are expected here."""
    original = model if model is not None else entry.build(size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", surgeon.TraceFallbackWarning)
        converted = surgeon.convert(original, kind, **convert_options(entry, size, kind))
    return original, converted


def parameter_count(model: nn.Module) -> int:
    """Parameters, a tied one counted once."""
    return sum(p.numel() for p in model.parameters())


def _skips_summary(skips: Sequence[surgeon.surgery.record.Skip]) -> str:
    reasons: dict[str, list[str]] = {}
    for skip in skips:
        reason = skip.reason.split(";")[0].split(" (its result")[0]
        if reason.startswith("min(in, out)"):
            reason = "min(in, out) < min_features"
        reasons.setdefault(reason, []).append(skip.name)
    return "; ".join(f"{', '.join(names[:2])}{' …' if len(names) > 2 else ''}"
                     f"{f' (+{len(names) - 2})' if len(names) > 2 else ''}: {reason}"
                     for reason, names in reasons.items()) or "—"


def rows(size: str = "full", kinds: Sequence[str] = ("acdc", "fastfood")) -> list[dict[str, Any]]:
    """One dict per (model, kind): parameters before/after, converted sites and the skips."""
    table: list[dict[str, Any]] = []
    for entry in MODELS:
        try:
            model = entry.build(size)
        except ImportError as exc:
            table.append({"model": entry.name, "kind": "—", "note": f"not installed: {exc.name}"})
            continue
        for kind in kinds:
            torch.manual_seed(0)
            _, converted = convert_entry(entry, size, kind, model)
            record = surgeon.records(converted)[-1]
            table.append({"model": entry.name, "family": entry.family, "kind": kind,
                          "targets": "+".join(convert_options(entry, size, kind).get("targets", ("linear",))),
                          "before": parameter_count(model), "after": parameter_count(converted),
                          "converted": len(record.changes), "skips": _skips_summary(record.skipped)})
            del converted
        del model
    return table


def markdown(table: Sequence[dict[str, Any]]) -> str:
    lines = ["| model | kind | targets | params before → after | ratio | converted | left dense (why) |",
             "|---|---|---|---|---|---|---|"]
    for row in table:
        if "before" not in row:
            lines.append(f"| {row['model']} | — | — | — | — | — | {row['note']} |")
            continue
        ratio = row["before"] / max(row["after"], 1)
        lines.append(f"| {row['model']} | {row['kind']} | {row['targets']} | {row['before']:,} → {row['after']:,} "
                     f"| ×{ratio:.2f} | {row['converted']} | {row['skips']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m surgeon.zoo_table", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--kinds", default="acdc,fastfood", help="comma-separated: acdc,fastfood")
    args = parser.parse_args(argv)
    print(markdown(rows(args.size, [k for k in args.kinds.split(",") if k])))


if __name__ == "__main__":
    main()
