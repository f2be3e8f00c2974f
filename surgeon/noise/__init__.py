"""Noisy activation functions (thesis §4.3) and mollifying networks (thesis §4.4)."""

from surgeon.noise.annealer import SCHEDULES, Annealer
from surgeon.noise.base import HALF_NORMAL_MEAN, NoiseModule, PerUnitNoiseModule
from surgeon.noise.hard import hard_sigmoid, hard_tanh, lin_sigmoid, lin_tanh, sgn
from surgeon.noise.mollified import MOLLIFIED_KINDS, MollifiedActivation
from surgeon.noise.noisy import NOISY_MODES, NoisyHardSigmoid, NoisyHardTanh
from surgeon.noise.recurrent import GATE_KINDS, NoisyGRU, NoisyGRUCell, NoisyLSTM, NoisyLSTMCell
from surgeon.noise.skip import StochasticSkip

__all__ = [
    "GATE_KINDS",
    "HALF_NORMAL_MEAN",
    "MOLLIFIED_KINDS",
    "NOISY_MODES",
    "SCHEDULES",
    "Annealer",
    "MollifiedActivation",
    "NoiseModule",
    "NoisyGRU",
    "NoisyGRUCell",
    "NoisyHardSigmoid",
    "NoisyHardTanh",
    "NoisyLSTM",
    "NoisyLSTMCell",
    "PerUnitNoiseModule",
    "StochasticSkip",
    "hard_sigmoid",
    "hard_tanh",
    "lin_sigmoid",
    "lin_tanh",
    "sgn",
]
