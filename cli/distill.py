"""``surgeon distill``: recover a converted model by distillation from its dense teacher, on unlabelled inputs."""

from __future__ import annotations

from typing import Annotated

import typer

from surgeon.cli.failures import run_guarded
from surgeon.cli.files import check_output, default_output, save_model
from surgeon.cli.models import load_model
from surgeon.cli.options import ArchOption, ForceOption, JsonOption, OutputOption, QuietOption, TrustOption
from surgeon.cli.output import Output

DataOption = Annotated[str, typer.Option("--data", help="Input tensors: .safetensors, .npz or a weights-only .pt "
                                                        "(the tensor named 'inputs', or the only one).")]


def distill_command(
    student: Annotated[str, typer.Argument(help="The converted model (a surgeon checkpoint).")],
    teacher: Annotated[str, typer.Option("--teacher", help="The dense model it was converted from.")],
    data: DataOption,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps.")] = 200,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine decay).")] = 1e-3,
    loss: Annotated[str, typer.Option("--loss", help="kl (logits) or mse.")] = "kl",
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature for kl.")] = 2.0,
    features: Annotated[bool, typer.Option("--features/--no-features",
                                           help="Also match each replaced layer's output.")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per step.")] = 64,
    warmup: Annotated[float, typer.Option("--warmup", help="Share of the steps with a linear learning-rate "
                                                           "warm-up before the cosine decay.")] = 0.0,
    keep_best: Annotated[bool, typer.Option("--keep-best/--no-keep-best",
                                            help="Hold out some inputs and keep the student state that scores "
                                                 "best on them (the start included).")] = True,
    held_out: Annotated[float, typer.Option("--held-out", help="Share of the inputs held out for --keep-best "
                                                               "(never trained on).")] = 0.1,
    checks: Annotated[int, typer.Option("--checks", help="Held-out checks during the run for --keep-best.")] = 10,
    output: OutputOption = None,
    arch: ArchOption = None,
    teacher_arch: Annotated[str | None, typer.Option("--teacher-arch", help="Architecture of the teacher file "
                                                                             "(default: --arch).")] = None,
    trust: TrustOption = False,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train STUDENT to imitate --teacher on --data (inputs only, no labels) and write it.

    Example: surgeon distill mlp.acdc.safetensors --teacher mlp.pt --arch example:mlp --data x.npz -o mlp.kd.safetensors
    """
    out = Output(quiet, as_json)

    def action() -> None:
        from surgeon.recovery.config import DistillConfig
        from surgeon.recovery.data import load_tensor
        from surgeon.recovery.distill import distill

        config = DistillConfig(steps=steps, lr=lr, loss=loss, temperature=temperature, features=features,
                               batch_size=batch_size, warmup=warmup, keep_best=keep_best, held_out=held_out,
                               checks=checks)
        target = output or default_output(student, "distilled")
        check_output(target, force=force, inputs=(student, teacher, data), suffixes=(".safetensors", ".pt"))
        inputs = load_tensor(data)
        loaded = load_model(student, arch=arch, trust=trust)
        dense = load_model(teacher, arch=teacher_arch or arch or loaded.arch, trust=trust)
        model = distill(loaded.model, dense.model, inputs, config, quiet=quiet or as_json)
        size = save_model(model, target, arch=loaded.arch)
        note = model.surgeon_records[-1].warnings[0] if model.surgeon_records[-1].warnings else "distilled"
        out.info(f"{note}; wrote {target} ({size / 1e6:.2f} MB)")
        out.data({"path": target, "bytes": size, "note": note})

    run_guarded(out, action)
