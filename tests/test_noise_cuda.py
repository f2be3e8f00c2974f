"""The noise modules on CUDA tensors (skipped without a GPU): same results as on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surgeon.noise import (
    Annealer,
    MollifiedActivation,
    NoisyGRU,
    NoisyHardSigmoid,
    NoisyHardTanh,
    NoisyLSTM,
    StochasticSkip,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize(
    "factory",
    [
        lambda: NoisyHardSigmoid(mode="nah", c=2.0),
        lambda: NoisyHardTanh(mode="nanil", c=2.0),
        lambda: NoisyHardTanh(mode="nanis"),
        lambda: MollifiedActivation("sigmoid", p=0.7, c=10.0),
        lambda: MollifiedActivation("relu", p=0.3, c=10.0, unit_dim=1),
    ],
)
def test_activations_match_cpu(factory):
    torch.manual_seed(0)
    cpu = factory()
    x = torch.randn(4, 6, 5) * 4
    xi = torch.randn_like(x)
    cpu(x)  # materialise the lazy per-unit parameter
    gpu = factory()
    gpu(x)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    for training in (True, False):
        cpu.train(training)
        gpu.train(training)
        got = gpu(x.cuda(), noise=xi.cuda()).cpu()
        torch.testing.assert_close(got, cpu(x, noise=xi), rtol=1e-5, atol=1e-6)
    gpu.train()
    y = gpu(x.cuda().half())  # internal noise drawn on the device, fp16 in / fp16 out
    assert y.is_cuda and y.dtype == torch.float16 and torch.isfinite(y).all()


def test_lazy_module_moved_before_first_call():
    m = NoisyHardSigmoid().cuda()
    y = m(torch.randn(3, 7, device="cuda"))
    assert m.p.is_cuda and y.is_cuda and m.p.shape == (7,)


@pytest.mark.parametrize("cls,ref_cls", [(NoisyLSTM, nn.LSTM), (NoisyGRU, nn.GRU)])
def test_rnn_transfer_on_cuda(cls, ref_cls):
    torch.manual_seed(1)
    ref = ref_cls(5, 8, num_layers=2, bidirectional=True, batch_first=True).cuda()
    ours = cls.from_torch(ref, gates="soft")
    x = torch.randn(3, 10, 5, device="cuda")
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-4, atol=1e-5)
    noisy = cls.from_torch(ref, gates="noisy").train()
    assert noisy(x)[0].is_cuda


def test_annealer_and_skip_on_cuda():
    block = nn.Sequential(nn.Linear(4, 6), MollifiedActivation())
    model = nn.Sequential(StochasticSkip(block)).cuda()
    model(torch.randn(2, 4, device="cuda"))
    ann = Annealer(model, "linear", total_steps=4)
    ann.step()
    assert model[0].p.is_cuda and model[0].p.item() == pytest.approx(0.75)
    assert model(torch.randn(2, 4, device="cuda")).shape == (2, 6)
