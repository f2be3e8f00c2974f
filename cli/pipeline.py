"""The load → transform → save → report flow shared by convert, noisify and mollify."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from torch import nn

from surgeon.cli.failures import InputError, UsageError
from surgeon.cli.files import check_output, default_output, save_model
from surgeon.cli.models import LoadedModel, example_inputs, load_model
from surgeon.cli.options import parse_shape
from surgeon.cli.output import Output


def transform_and_save(out: Output, *, model: str, output: str | None, tag: str, arch: str | None, trust: bool,
                       force: bool, input_shape: str | None,
                       transform: Callable[[LoadedModel], nn.Module], targets: str) -> None:
    """Validate every argument, load, transform, refuse a no-op, build the report, and only then write the output:
    a command that fails at any step leaves no file behind.

    ``targets`` names what the transform looks for, for the error when it found nothing.
    """
    from surgeon.reporting import report
    from surgeon.surgery.record import records

    shape = parse_shape(input_shape)
    target = output or default_output(model, tag)
    check_output(target, force=force, inputs=(model,), suffixes=(".safetensors", ".pt"))
    loaded = load_model(model, arch=arch, trust=trust)
    if target.endswith(".pt") and loaded.kind != "pickle":
        raise UsageError("a .pt output holds a pickled module and needs a pickled (--trust) input; "
                         "use a .safetensors output")
    out.info(f"loaded {model} ({loaded.kind}); applying {tag}")
    with warnings.catch_warnings(record=True) as caught:
        transformed = transform(loaded)
    record = records(transformed)[-1]
    if not record.changes:  # the one error line says it all; the "nothing was replaced" warning would repeat it
        why = f"; skipped: {record.skipped[0].name} ({record.skipped[0].reason})" if record.skipped else ""
        raise InputError(f"nothing to {record.transform} in {model}: no {targets} was selected{why}")
    for warning in caught:
        out.warn(str(warning.message))
    result = report(transformed, baseline=loaded.model, example_inputs=example_inputs(loaded, shape))
    out.show(result)
    size = save_model(transformed, target, arch=loaded.arch, force=force)
    out.info(f"wrote {target} ({size / 1e6:.2f} MB)")
    payload = result.to_dict()
    payload["output"] = {"path": target, "bytes": size}
    out.data(payload)
