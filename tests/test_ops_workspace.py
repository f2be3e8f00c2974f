"""The recycled buffers of ``recompute=False``: reused only once autograd lets go of them."""

import torch

from surgeon import ACDCLinear
from surgeon.ops import workspace


def _layer() -> ACDCLinear:
    layer = ACDCLinear(300, 300, depth=3, seed=2, dtype=torch.float64, recompute=False)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(1.0, 0.5)
    return layer


def test_a_retained_graph_keeps_its_buffers_while_new_steps_run():
    layer = _layer()
    x = torch.randn(5, 300, dtype=torch.float64, requires_grad=True)
    kept = layer(x).square().sum()
    kept.backward(retain_graph=True)
    first = x.grad.clone()
    for _ in range(2):   # other steps on other inputs, same shape: they must not take the retained graph's buffers
        layer(torch.randn(5, 300, dtype=torch.float64, requires_grad=True)).square().sum().backward()
    x.grad = None
    kept.backward()
    torch.testing.assert_close(x.grad, first, rtol=0, atol=0)


def test_buffers_are_reused_after_the_backward_and_cleared_on_request():
    layer = _layer()
    x = torch.randn(4, 300, dtype=torch.float64, requires_grad=True)
    workspace.clear()
    layer(x).sum().backward()
    held = workspace.idle_bytes()
    assert held == (2 * layer.depth - 1) * x.numel() * 8
    layer(x).sum().backward()
    assert workspace.idle_bytes() == held, "a second step must recycle the first step's buffers"
    busy = layer(x)
    assert workspace.idle_bytes() == 0, "buffers a live graph holds are not idle"
    del busy
    workspace.clear()
    assert workspace.idle_bytes() == 0


def test_the_pool_never_holds_more_than_its_cap(monkeypatch):
    layer = _layer()
    x = torch.randn(4, 300, dtype=torch.float64, requires_grad=True)
    workspace.clear()
    one = x.numel() * 8
    monkeypatch.setattr(workspace, "POOL_MAX_BYTES", workspace._held[0] + 2 * one)  # room for two more buffers
    layer(x).sum().backward()
    assert workspace.idle_bytes() == 2 * one, "buffers beyond the cap are plain tensors, freed with the graph"
    layer(x).sum().backward()
    assert workspace.idle_bytes() == 2 * one
    workspace.clear()
