"""Shared check for the layer tests of both kernel families."""

import torch


def assert_backends_agree(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """The layer's output and every gradient are the same through the Triton and the torch backend."""
    outs = {}
    for backend in ("torch", "triton"):
        layer.zero_grad()
        x.grad = None
        layer.backend = backend
        y = layer(x)
        y.square().sum().backward()
        outs[backend] = [y.detach(), x.grad.clone(), *(p.grad.clone() for p in layer.parameters())]
    for got, want in zip(outs["triton"], outs["torch"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
