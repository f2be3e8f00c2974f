"""The three trained models recipe ``compress_trained`` compresses, each with its data and its task metric.

* ``digits_mlp``: a dense MLP ``64 → widths… → 10`` on scikit-learn's digits; metric: test accuracy.
* ``gpt2``: a Hugging Face GPT-2 built offline from a config (byte vocabulary), trained on the Python standard
  library's own source files; metric: held-out perplexity (lower is better).
* ``vit``: a timm VisionTransformer on the 8×8 digits (patches of 2×2, so 16 tokens); metric: test accuracy.

Each builder trains the dense model and returns a :class:`Task`: the model, calibration batches for the fit,
unlabelled inputs for distillation and the metric.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgeon.recipes import data
from surgeon.recipes.convert_trained import build_mlp
from surgeon.recipes.engine import RecipeContext, evaluate, train, unwrap


@dataclass
class Task:
    """A trained dense model and what its compression needs."""

    name: str
    model: nn.Module
    calibration: list[Any]                 # batches of model inputs for ``convert(init="fit")``
    inputs: torch.Tensor                   # unlabelled training inputs for ``distill``
    metric: Callable[[nn.Module], float]
    metric_name: str                       # "test accuracy" or "perplexity"
    higher_is_better: bool
    # the metric on held-out inputs that no setting was chosen on (None: the task has none)
    unseen_metric: Callable[[nn.Module], float] | None = None


def _fit_adamw(model: nn.Module, batch_loss: Callable[[torch.Generator], torch.Tensor], steps: int, lr: float,
               seed: int, weight_decay: float = 0.0) -> None:
    """``steps`` AdamW updates with a one-cycle learning rate (warm-up, then cosine decay to ~0)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(2, steps), pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        loss = batch_loss(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()


def _accuracy(x: torch.Tensor, y: torch.Tensor) -> Callable[[nn.Module], float]:
    ce = nn.functional.cross_entropy
    return lambda model: 1 - evaluate(model, x, y, ce)["error"]


def digits_mlp(ctx: RecipeContext, *, widths: Sequence[int] = (256, 256, 256), epochs: int = 40,
               batch_size: int = 64, lr: float = 2e-3, calibration_batches: int = 16) -> Task:
    x_tr, y_tr, x_te, y_te = data.digits(ctx.seed, image=False)
    torch.manual_seed(ctx.seed)
    model = ctx.wrap(build_mlp(widths))
    per_epoch = -(-len(x_tr) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train(ctx, model, opt, ctx.loader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size),
          nn.functional.cross_entropy, epochs * per_epoch, description="dense MLP")
    calibration = [x_tr[i * batch_size:(i + 1) * batch_size] for i in range(calibration_batches)]
    return Task("digits_mlp", unwrap(model).eval(), calibration, x_tr, _accuracy(x_te, y_te), "test accuracy", True)


def stdlib_bytes(files: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) rows of ``length`` bytes from the first ``files`` standard-library modules, shuffled."""
    paths = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:files]
    text = b"".join(Path(path).read_bytes() for path in paths)
    tokens = torch.tensor(list(text), dtype=torch.long)
    rows = tokens[: len(tokens) // length * length].view(-1, length)
    rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))]
    held = max(1, rows.shape[0] // 10)
    return rows[held:], rows[:held]


@torch.no_grad()
def perplexity(model: nn.Module, rows: torch.Tensor) -> float:
    """exp(mean next-byte cross-entropy) of a Hugging Face causal LM over ``rows`` (n, length)."""
    model.eval()
    total = sum(float(model(part, labels=part).loss) * part.numel() for part in rows.split(64))
    return math.exp(total / rows.numel())


def gpt2(ctx: RecipeContext, *, steps: int = 400, lr: float = 2e-3, batch: int = 32, files: int = 60,
         length: int = 64, width: int = 128, layers: int = 2, heads: int = 4, calibration_batches: int = 8,
         distill_rows: int = 4096, test_rows: int = 256) -> Task:
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    train_rows, held = stdlib_bytes(files, length, ctx.seed)
    torch.manual_seed(ctx.seed)
    config = GPT2Config(vocab_size=256, n_positions=length, n_embd=width, n_layer=layers, n_head=heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                        loss_type="ForCausalLM")
    model = GPT2LMHeadModel(config)

    def batch_loss(gen: torch.Generator) -> torch.Tensor:
        rows = train_rows[torch.randint(0, train_rows.shape[0], (batch,), generator=gen)]
        return model(rows, labels=rows).loss

    _fit_adamw(model, batch_loss, steps, lr, ctx.seed)
    calibration = [train_rows[i:i + batch] for i in range(0, calibration_batches * batch, batch)]
    # the recipe's GPT-2 settings were read off `test`; the rest of the held-out rows judge them afresh
    test, unseen = held[:test_rows], held[test_rows:]
    return Task("gpt2", model, calibration, train_rows[:distill_rows], lambda m: perplexity(m, test), "perplexity",
                False, (lambda m: perplexity(m, unseen)) if len(unseen) else None)


def vit(ctx: RecipeContext, *, steps: int = 1500, lr: float = 3e-3, batch: int = 64, embed_dim: int = 64,
        blocks: int = 2, heads: int = 4, mlp_ratio: float = 4.0, calibration_batches: int = 16) -> Task:
    from timm.models.vision_transformer import VisionTransformer

    x_tr, y_tr, x_te, y_te = data.digits(ctx.seed, image=True)
    torch.manual_seed(ctx.seed)
    model = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=embed_dim,
                              depth=blocks, num_heads=heads, mlp_ratio=mlp_ratio, global_pool="avg",
                              class_token=False)

    def batch_loss(gen: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(x_tr), (batch,), generator=gen)
        return nn.functional.cross_entropy(model(x_tr[index]), y_tr[index])

    _fit_adamw(model, batch_loss, steps, lr, ctx.seed, weight_decay=0.05)
    calibration = [x_tr[i * batch:(i + 1) * batch] for i in range(calibration_batches)]
    return Task("vit", model, calibration, x_tr, _accuracy(x_te, y_te), "test accuracy", True)
