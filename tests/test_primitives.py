"""The shared op definitions: the activation table against autograd, and the one-way ops → kernels imports."""

import ast
from pathlib import Path

import pytest
import torch

from surgeon.primitives import ACTIVATIONS, activation_spec, canonical_activation, compute_dtype, kernel_supported

KERNELS = Path(__file__).resolve().parents[1] / "kernels"


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_table_matches_autograd(name):
    spec = activation_spec(name)
    y = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    out = spec.apply(y)
    (expected_slope,) = torch.autograd.grad(out.sum(), y)
    y0 = y.detach()
    assert torch.equal(spec.apply_(y0.clone()), out.detach())
    if spec.slope_ is None:
        assert torch.equal(out.detach(), y0) and torch.all(expected_slope == 1)
        return
    slope = spec.slope_(out.detach(), torch.empty_like(y0))
    mask = y0 != 0  # relu-like kinks: any one-sided slope is fine at 0
    torch.testing.assert_close(slope[mask], expected_slope[mask])


def test_activation_names_and_codes():
    assert canonical_activation(None) == canonical_activation("Linear") == "none"
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        canonical_activation("gelu")
    codes = [spec.code for spec in ACTIVATIONS.values()]
    assert len(set(codes)) == len(codes)


def test_compute_dtype_and_support_rule():
    assert compute_dtype(torch.float64) == torch.float64
    assert all(compute_dtype(d) == torch.float32 for d in (torch.float32, torch.float16, torch.bfloat16))
    assert kernel_supported(16, torch.float16) and kernel_supported(16384, torch.bfloat16)
    assert not kernel_supported(8, torch.float32) and not kernel_supported(32768, torch.float32)
    assert not kernel_supported(96, torch.float32) and not kernel_supported(64, torch.float64)


def test_kernels_never_import_surgeon_ops():
    for path in KERNELS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "surgeon.ops" or n.startswith("surgeon.ops.") for n in names), path.name
