"""LSTM/GRU layers and cells whose gate nonlinearities are noisy, mollified, hard or plain soft.

The thesis replaced *all* sigmoid/tanh of the recurrent models, gates included (§4.3.6, §4.4.3.2).
The modules here take the exact parameters of ``nn.LSTM``/``nn.GRU``/``nn.LSTMCell``/``nn.GRUCell``
(same names: ``weight_ih_l0``, ``bias_hh_l1_reverse``, ... and ``weight_ih``/``bias_hh`` for cells), so
a torch state_dict transfers; ``from_torch(module, **kw)`` copies one. Recurrences (torch's)::

    LSTM: i, f, g, o = split(W_ih x_t + b_ih + W_hh h + b_hh)
          c' = S_f(f) c + S_i(i) T_g(g),  h' = S_o(o) T_c(c')
    GRU:  r = S_r(x_r + h_r), z = S_z(x_z + h_z), n = T_n(x_n + r (W_hn h + b_hn)),  h' = (1 − z) n + z h

where S, T are the configured sigmoid-like / tanh-like activations, one instance per gate, layer and
direction (each owns its per-unit parameters). ``gates``:

* ``"soft"``: ``torch.sigmoid`` / ``torch.tanh`` (reproduces torch's modules),
* ``"hard"``: hard-sigmoid / hard-tanh (eqs. 4.3–4.4, the "hard only" baseline of Table 4.4),
* ``"noisy"``: :class:`NoisyHardSigmoid` / :class:`NoisyHardTanh` (§4.3),
* ``"mollified"``: :class:`MollifiedActivation` of kind sigmoid / tanh (§4.4.3.2).

``gate_kwargs`` are passed to both activation constructors (e.g. ``{"mode": "nanil", "c": 0.3}``).
The gate activations of one RNN layer form one annealer layer (a :class:`NoiseModule` group).
``clip_gates=True`` clamps every gate output to the range of the function it replaces ([0, 1] / [−1, 1]): the
NAN output is unbounded and, used as a forget gate, can blow up the cell state (the authors' ``clip_output``).

Speed. The input projections of all timesteps are one matmul per layer and direction (both biases in it on the
LSTM's hand-written loop, :class:`_LSTMSequence`). The noise of a whole sequence is one draw per fused call, except
for the NAN/NAH LSTM on CPU, which draws ε per step for the saturated units only (the noise term of eq. 4.15 vanishes
elsewhere; see :meth:`_OutputNoise.draw_saturated`). Each step applies the gates of one kind in one call on their
concatenated pre-activations, with the gates' per-unit parameters concatenated once per forward: the LSTM's sigmoid
call covers all four chunks of the (B, 4H) pre-activation (the g columns get a zero parameter and are not used —
cheaper than reordering or concatenating chunks every step), then one call each for T_g and T_c; the GRU has one
call on its (B, 2H) r/z block and one for n. The values are those of the gate modules called one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from surgeon.layers.checks import require_floating
from surgeon.noise.base import NoiseModule, compute_dtype
from surgeon.noise.hard import hard_sigmoid, hard_tanh
from surgeon.noise.mollified import MollifiedActivation
from surgeon.noise.noisy import (
    HardShape,
    NoisyHardSigmoid,
    NoisyHardTanh,
    output_noise_phi,
    output_noise_phi_parts,
)

__all__ = ["GATE_KINDS", "NoisyGRU", "NoisyGRUCell", "NoisyLSTM", "NoisyLSTMCell"]

GATE_KINDS: tuple[str, ...] = ("soft", "hard", "noisy", "mollified")

#: A gate call of one step: (pre-activations (B, k·H), step index t) -> activations (B, k·H).
GateCall = Callable[[torch.Tensor, int], torch.Tensor]
State = tuple[torch.Tensor, ...]

_FIXED: dict[str, dict[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "soft": {"sigmoid": torch.sigmoid, "tanh": torch.tanh},
    "hard": {"sigmoid": hard_sigmoid, "tanh": hard_tanh},
}
_RANGE = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


def _lstm_step(gx: torch.Tensor, t: int, state: State, w_hh: torch.Tensor, b_hh: torch.Tensor | None,
               calls: Sequence[GateCall]) -> State:
    """One LSTM step. gx: (B, 4H) input projection incl. b_ih; state (h, c) each (B, H)."""
    h, c = state
    pre = gx + F.linear(h, w_hh, b_hh)
    if len(calls) == 2:  # one call for all four gates (the noisy output-noise gates in training)
        i, f, g, o = calls[0](pre, t).chunk(4, dim=-1)
    else:
        i, f, _, o = calls[0](pre, t).chunk(4, dim=-1)
        g = calls[1](pre.chunk(4, dim=-1)[2], t)
    c_new = f * c + i * g
    return o * calls[-1](c_new, t), c_new


def _gru_step(gx: torch.Tensor, t: int, state: State, w_hh: torch.Tensor, b_hh: torch.Tensor | None,
              calls: Sequence[GateCall]) -> State:
    """One GRU step. gx: (B, 3H) input projection incl. b_ih; state (h,) with h (B, H)."""
    (h,) = state
    hidden = h.shape[-1]
    x_rz, x_n = gx.split([2 * hidden, hidden], dim=-1)
    h_rz, h_n = F.linear(h, w_hh, b_hh).split([2 * hidden, hidden], dim=-1)
    r, z = calls[0](x_rz + h_rz, t).chunk(2, dim=-1)
    n = calls[1](x_n + r * h_n, t)
    return ((1.0 - z) * n + z * h,)


@dataclass(frozen=True)
class _Recurrence:
    """What distinguishes the LSTM from the GRU; everything else (time loop, layers, directions) is shared."""

    gates: dict[str, str]                       # gate name -> base nonlinearity ("c": tanh of the LSTM cell)
    calls: tuple[tuple[str | None, ...], ...]   # the gates of each fused call, in pre-activation column order
    merged: tuple[tuple[str, ...], ...]         # the same when one call may mix sigmoid- and tanh-like gates
    n_chunks: int                               # rows of W_ih per hidden unit
    n_states: int                               # (h, c) or (h,)
    step: Callable[..., State]

    def base(self, names: tuple[str | None, ...]) -> str:
        return self.gates[next(n for n in names if n is not None)]

    def states(self, hx: Any) -> list[torch.Tensor] | None:
        if hx is None:
            return None
        return list(hx) if isinstance(hx, (tuple, list)) else [hx]

    def pack(self, state: Sequence[torch.Tensor]) -> Any:
        return tuple(state) if self.n_states > 1 else state[0]


_LSTM = _Recurrence({"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid", "c": "tanh"},
                    (("i", "f", None, "o"), ("g",), ("c",)), (("i", "f", "g", "o"), ("c",)), 4, 2, _lstm_step)
_GRU = _Recurrence({"r": "sigmoid", "z": "sigmoid", "n": "tanh"}, (("r", "z"), ("n",)), (("r", "z"), ("n",)),
                   3, 1, _gru_step)


def _torch_rnn_init(module: nn.Module) -> None:
    """torch's RNN init: every weight and bias ~ U(−1/√H, 1/√H)."""
    bound = 1.0 / math.sqrt(module.hidden_size)
    with torch.no_grad():
        for name, param in module.named_parameters(recurse=False):
            if name.startswith(("weight_", "bias_")):
                param.uniform_(-bound, bound)


def _check_gates(gates: str) -> str:
    gates = str(gates).lower()
    if gates not in GATE_KINDS:
        raise ValueError(f"gates must be one of {GATE_KINDS}, got {gates!r}")
    return gates


class _GateActivations(NoiseModule):
    """The gate activations of one recurrent layer (all directions): one annealer layer group.

    ``acts[name + suffix]`` is one activation module per gate and direction, each with its own per-unit
    parameters (the checkpoint names ``gate_activations.<layer>.acts.<gate><suffix>.*``).
    """

    def __init__(self, gate_spec: dict[str, str], suffixes: list[str], hidden_size: int, gates: str,
                 gate_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.acts = nn.ModuleDict()
        for suffix in suffixes:
            for name, base in gate_spec.items():
                if gates == "noisy":
                    cls = NoisyHardSigmoid if base == "sigmoid" else NoisyHardTanh
                    mod: nn.Module = cls(num_features=hidden_size, **gate_kwargs)
                else:
                    mod = MollifiedActivation(kind=base, num_features=hidden_size, **gate_kwargs)
                self.acts[name + suffix] = mod


def _fused_call(mods: list[nn.Module | None], hidden: int, ref: torch.Tensor, n_steps: int,
                clip: tuple[float, float] | None) -> GateCall:
    """Apply the activation modules ``mods`` (None: an unused column block) as one call on (B, len(mods)·H).

    The modules' per-unit tensors are concatenated here, once per forward (gradients flow back to each module's
    own parameters); in training the noise ξ of all ``n_steps`` steps is drawn at once.
    """
    first = next(m for m in mods if m is not None)
    dtype = compute_dtype(ref)

    def units(get: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        zeros = torch.zeros(hidden, dtype=dtype, device=ref.device)
        return torch.cat([zeros if m is None else get(m).to(dtype).expand(hidden) for m in mods])

    noise: Sequence[torch.Tensor | None] = [None] * n_steps
    if first.training:
        noise = torch.randn(n_steps, ref.shape[-2], len(mods) * hidden, dtype=dtype, device=ref.device).unbind(0)
    if isinstance(first, MollifiedActivation):
        a, pc = units(lambda m: m.a), units(lambda m: m.p.to(dtype) * m.c.to(dtype))

        def act(x: torch.Tensor, xi: torch.Tensor | None) -> torch.Tensor:
            return first.psi(x, xi, a, pc)
    else:
        assert isinstance(first, (NoisyHardSigmoid, NoisyHardTanh))
        p = units(lambda m: m.p) if hasattr(first, "p") else None
        c = units(lambda m: m.c)

        def act(x: torch.Tensor, xi: torch.Tensor | None) -> torch.Tensor:
            return first.phi(x, xi, p, c)

    def call(x: torch.Tensor, t: int) -> torch.Tensor:
        out = act(x.to(dtype), noise[t])
        if clip is not None:
            out = out.clamp(*clip)
        return out.to(x.dtype)

    return call


class _OutputNoise(NamedTuple):
    """Noisy nan/nah gates of one fused call, prepared for a forward: per-unit p, the per-unit noise factor
    sgn(1 − α)·c, whether ε is half-normal (nah), the per-unit :class:`HardShape`, the clip bounds (None: no
    clipping) and the noise factor·ε of every step, (T, B, k·H), where it is drawn at once (None: drawn step by step
    where the units saturate, :meth:`draw_saturated`)."""

    p: torch.Tensor
    factor: torch.Tensor
    half_normal: bool
    shape: HardShape
    bounds: tuple[torch.Tensor, torch.Tensor] | None
    noise: torch.Tensor | None

    @staticmethod
    def of(mods: list[nn.Module], hidden: int, ref: torch.Tensor, n_steps: int, clip: bool,
           lazy: bool = False) -> _OutputNoise:
        """Concatenate the gates' shapes, p and noise factors per unit; ε of all steps is drawn at once unless
        ``lazy``."""
        dtype = compute_dtype(ref)
        gates = [m for m in mods if isinstance(m, (NoisyHardSigmoid, NoisyHardTanh))]
        shape = HardShape.of(gates, hidden, torch.empty(0, dtype=dtype, device=ref.device))
        p = torch.cat([m.p.to(dtype).expand(hidden) for m in gates])
        factor = torch.cat([(m.c.to(dtype) * (1.0 if 1.0 - m.alpha >= 0 else -1.0)).expand(hidden) for m in gates])
        half_normal = gates[0].mode == "nah"
        noise = None
        if not lazy:
            xi = torch.randn(n_steps, ref.shape[-2], len(gates) * hidden, dtype=dtype, device=ref.device)
            noise = (xi.abs_() if half_normal else xi).mul_(factor)  # in place: (T, B, k·H) is large
        return _OutputNoise(p, factor, half_normal, shape, (shape.lo, shape.hi) if clip else None, noise)

    def draw_saturated(self, sign: torch.Tensor) -> torch.Tensor | None:
        """factor·ε for one step where it is used, the saturated units (sgn(Δ) ≠ 0); None where none saturates.

        The noise term d σ ε of eq. 4.15 carries σ = c (sigmoid(pΔ) − ½)², which is 0 wherever Δ = 0, so ε matters
        only where a unit saturates: φ has the same distribution whether ε is drawn everywhere or there only. The
        normals dominate the CPU cost of an update, so they are drawn for the saturated units alone (scattered in
        row-major order) while those are at most a third of the units; beyond that (measured: scattering them then
        costs about what drawing the rest saves) ε is drawn for every unit. sign: (B, k·H).
        """
        saturated = sign.ne(0)
        count = int(saturated.count_nonzero())
        if count == 0:
            return None
        if 3 * count > sign.numel():
            eps = torch.randn(sign.shape, dtype=sign.dtype, device=sign.device)
        else:
            eps = torch.zeros_like(sign).masked_scatter_(
                saturated, torch.randn(count, dtype=sign.dtype, device=sign.device))
        return (eps.abs_() if self.half_normal else eps).mul_(self.factor)


def _output_noise_call(mods: list[nn.Module], hidden: int, ref: torch.Tensor, n_steps: int, clip: bool) -> GateCall:
    """Noisy nan/nah gates in training, sigmoid- and tanh-like alike, as one :func:`output_noise_phi` per step."""
    gates = _OutputNoise.of(mods, hidden, ref, n_steps, clip)
    assert gates.noise is not None
    noise = gates.noise.unbind(0)
    cast = gates.p.dtype != ref.dtype

    def call(x: torch.Tensor, t: int) -> torch.Tensor:
        out = output_noise_phi(x.to(gates.p.dtype) if cast else x, gates.p, noise[t], gates.shape)
        if gates.bounds is not None:
            out = torch.clamp(out, *gates.bounds)
        return out.to(ref.dtype) if cast else out

    return call


class _Gate(NamedTuple):
    """An elementwise gate of the hand-written LSTM time loop: ``step(pre (B, k·H), t)`` -> (activations,
    ∂act/∂pre (may be a broadcast view), ½ ∂act/∂p before summing over the batch, or None where the gate learns no p
    or, at that step, it is 0); ``p`` the learned per-unit parameter (k·H) or None."""

    step: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    p: torch.Tensor | None = None


_SHAPES = {"sigmoid": (0.25, 0.5, 0.0, 1.0), "tanh": (1.0, 0.0, -1.0, 1.0)}  # slope, offset, lo, hi of h


def _soft_gate(bases: Sequence[str], hidden: int) -> _Gate:
    """sigmoid on the sigmoid blocks, tanh on the tanh blocks (the LSTM's g, or c)."""
    tanh = [slice(k * hidden, (k + 1) * hidden) for k, b in enumerate(bases) if b == "tanh"]

    def step(pre: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        if len(tanh) == len(bases):
            out = torch.tanh(pre)
            return out, 1.0 - out.square(), None
        out = torch.sigmoid(pre)
        d_x = out * (1.0 - out)
        for block in tanh:
            th = torch.tanh(pre[:, block])
            out[:, block] = th
            d_x[:, block] = 1.0 - th.square()
        return out, d_x, None

    return _Gate(step)


def _hard_gate(bases: Sequence[str], hidden: int, ref: torch.Tensor) -> _Gate:
    """hard-sigmoid / hard-tanh (eqs. 4.3–4.4) per block: clip(slope·x + offset, lo, hi)."""
    slope, offset, lo, hi = (torch.tensor([_SHAPES[b][k] for b in bases], dtype=ref.dtype, device=ref.device)
                             .repeat_interleave(hidden) for k in range(4))

    def step(pre: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        u = torch.addcmul(offset, pre, slope)
        return torch.clamp(u, lo, hi), slope * ((u >= lo) & (u <= hi)), None  # torch.clamp's gradient

    return _Gate(step)


def _output_noise_gate(gates: _OutputNoise) -> _Gate:
    """Noisy nan/nah gates (eq. 4.15) of one fused call; a clipped gate passes no gradient where it is clipped."""

    def step(pre: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        noise = gates.draw_saturated if gates.noise is None else gates.noise[t]
        out, d_x, half_d_p = output_noise_phi_parts(pre, gates.p, noise, gates.shape)
        if gates.bounds is not None and half_d_p is not None:  # (None: no unit saturated, φ = u is in range)
            clipped = torch.clamp(out, *gates.bounds)
            outside = clipped != out  # torch.clamp passes the gradient on the bounds themselves
            return clipped, d_x.masked_fill_(outside, 0.0), half_d_p.masked_fill_(outside, 0.0)
        return out, d_x, half_d_p

    return _Gate(step, gates.p)


class _LSTMSequence(torch.autograd.Function):
    """The LSTM time loop of one layer and direction as one autograd node, with backpropagation through time
    written out: per step, forward one addmm and the gates' elementwise ops (their derivatives alongside), backward a
    few products and one mm; no autograd graph per step. W_hh's gradient is one GEMM over all steps.

    forward(xp (T, B, 4H) input projections incl. both biases, h0, c0 (B, H), w_hh (4H, H), p_gates (4H) | None,
    p_cell (H) | None, gates (:class:`_Gate` on (B, 4H) in i, f, g, o order; T_c on (B, H))) -> (outputs (T, B, H),
    h_T, c_T). With a = gates(pre_t), pre_t = xp_t + W_hh h_{t−1}: c_t = a_f c_{t−1} + a_i a_g, h_t = a_o T_c(c_t);
    backward: δc_t = δh_t a_o T_c'(c_t) + δc_{t+1} a_f(t+1), δpre_t = (δc_t a_g, δc_t c_{t−1}, δc_t a_i, δh_t T_c(c_t))
    ⊙ ∂a/∂pre, δh_{t−1} = δpre_t W_hh + δout_{t−1}. Per-step tensors stay small (cache-resident); one (T, B, 4H)
    buffer per step would be re-faulted from the OS on every update. Checked by ``gradcheck`` and against ``nn.LSTM``.
    """

    @staticmethod
    def forward(ctx: Any, xp: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor,
                p_gates: torch.Tensor | None, p_cell: torch.Tensor | None,
                gates: tuple[_Gate, _Gate]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gate, cell = gates
        w_t = w_hh.t()
        h, c = h0, c0
        out = xp.new_empty(xp.shape[0], *h0.shape)
        steps: list[tuple[Any, ...]] = []
        for t, x_t in enumerate(xp.unbind(0)):
            acts, d_acts, half = gate.step(torch.addmm(x_t, h, w_t), t)
            i, f, g, o = acts.chunk(4, dim=-1)
            c_prev, c = c, torch.addcmul(f * c, i, g)
            tc, d_tc, half_c = cell.step(c, t)
            h = torch.mul(o, tc, out=out[t])
            steps.append((acts, d_acts, half, c_prev, tc, d_tc, half_c))
        ctx.save_for_backward(h0, w_hh, out)
        ctx.steps = steps
        ctx.learns_p = (p_gates is not None, p_cell is not None)
        return out, h.clone(), c.clone()

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor, d_h: torch.Tensor, d_c: torch.Tensor) -> tuple[Any, ...]:
        h0, w_hh, out = ctx.saved_tensors
        steps = ctx.steps
        acts0, tc0 = steps[0][0], steps[0][4]
        d_pre_all = acts0.new_empty(len(steps), *acts0.shape)
        d_acts_t = torch.empty_like(acts0)  # one buffer, rewritten at every step
        d_i, d_f, d_g, d_o = d_acts_t.chunk(4, dim=-1)
        # ½ ∂loss/∂p summed over the steps, per batch row (summed over the batch once, at the end)
        grad_p = [torch.zeros_like(like) if learns and ctx.needs_input_grad[4 + k] else None
                  for k, (learns, like) in enumerate(zip(ctx.learns_p, (acts0, tc0), strict=True))]
        for t in range(len(steps) - 1, -1, -1):
            acts, d_acts, half, c_prev, tc, d_tc, half_c = steps[t]
            i, f, g, o = acts.chunk(4, dim=-1)
            d_h = d_h + d_out[t]
            d_tanh = d_h * o
            d_c = torch.addcmul(d_c, d_tanh, d_tc)
            torch.mul(d_c, g, out=d_i)
            torch.mul(d_c, c_prev, out=d_f)
            torch.mul(d_c, i, out=d_g)
            torch.mul(d_h, tc, out=d_o)
            d_c = d_c * f
            d_pre = torch.mul(d_acts_t, d_acts, out=d_pre_all[t])
            d_h = d_pre.mm(w_hh)
            for acc, grad, part in zip(grad_p, (d_acts_t, d_tanh), (half, half_c), strict=True):
                if acc is not None and part is not None:  # part None: no unit of the step saturated
                    acc.addcmul_(grad, part)
        d_w_hh = None
        if ctx.needs_input_grad[3]:
            # Σ_t δpre_tᵀ h_{t−1}: one GEMM over steps 1…T−1 against the saved outputs, plus step 0 against h0
            d_w_hh = d_pre_all[0].t().mm(h0)
            if len(steps) > 1:
                d_w_hh.addmm_(d_pre_all[1:].flatten(0, 1).t(), out[:-1].flatten(0, 1))
        return (d_pre_all, d_h, d_c, d_w_hh, *[None if g is None else 2.0 * g.sum(0) for g in grad_p], None)


def _fused_lstm_gates(kind: str, group: _GateActivations | None, suffix: str, hidden: int, ref: torch.Tensor,
                      n_steps: int, clip: bool) -> tuple[_Gate, _Gate] | None:
    """The gates of :class:`_LSTMSequence` for one layer and direction, or None where the LSTM takes the generic
    time loop: mollified gates, noisy gates in eval or in the input-noise modes, reduced precision, no autograd."""
    if compute_dtype(ref) != ref.dtype or torch.jit.is_tracing() or not torch.is_grad_enabled():
        return None
    bases = [[_LSTM.gates[n] for n in names] for names in _LSTM.merged]
    if group is None:
        if kind == "soft":
            return _soft_gate(bases[0], hidden), _soft_gate(bases[1], hidden)
        return _hard_gate(bases[0], hidden, ref), _hard_gate(bases[1], hidden, ref)
    first = group.acts[_LSTM.merged[0][0] + suffix]
    if kind != "noisy" or not first.training or getattr(first, "mode", None) not in ("nan", "nah"):
        return None
    lazy = ref.device.type == "cpu"  # a draw per step pays on CPU, where the normals are costly; not on GPU
    gate, cell = (_OutputNoise.of([group.acts[n + suffix] for n in names], hidden, ref, n_steps, clip, lazy)
                  for names in _LSTM.merged)
    return _output_noise_gate(gate), _output_noise_gate(cell)


def _gate_calls(rec: _Recurrence, kind: str, group: _GateActivations | None, suffix: str, hidden: int,
                ref: torch.Tensor, n_steps: int, clip: bool) -> list[GateCall]:
    """The fused gate calls of one layer and direction; ``ref``: (…, B, F) input, for batch, dtype and device."""
    if group is not None and kind == "noisy":
        first = group.acts[rec.merged[0][0] + suffix]
        if first.training and getattr(first, "mode", None) in ("nan", "nah"):
            return [_output_noise_call([group.acts[n + suffix] for n in names], hidden, ref, n_steps, clip)
                    for names in rec.merged]
    calls: list[GateCall] = []
    for names in rec.calls:
        base = rec.base(names)
        if group is None:
            fn = _FIXED[kind][base]
            calls.append(lambda x, t, fn=fn: fn(x))
            continue
        mods = [None if n is None else group.acts[n + suffix] for n in names]
        calls.append(_fused_call(mods, hidden, ref, n_steps, _RANGE[base] if clip else None))
    return calls


def _run_direction(rec: _Recurrence, xp: torch.Tensor, state: State, w_hh: torch.Tensor,
                   b_hh: torch.Tensor | None, calls: Sequence[GateCall],
                   valid: torch.Tensor | None) -> tuple[torch.Tensor, State]:
    """The time loop: xp (T, B, G·H) input projections → outputs (T, B, H) and the final state."""
    outs = []
    for t, gx in enumerate(xp.unbind(0)):
        new = rec.step(gx, t, state, w_hh, b_hh, calls)
        if valid is not None:
            # Padded steps of packed sequences keep the state and output zeros, as torch does.
            m = valid[t].unsqueeze(-1)
            new = tuple(torch.where(m, n, s) for n, s in zip(new, state, strict=True))
            outs.append(torch.where(m, new[0], torch.zeros_like(new[0])))
        else:
            outs.append(new[0])
        state = new
    return torch.stack(outs, 0), state


def _transfer(new: nn.Module, old: nn.Module) -> None:
    """Copy a torch RNN's parameters; only the gate activations' own parameters may be missing."""
    result = new.load_state_dict(old.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("gate_activations.")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"state_dict mismatch: missing {missing}, unexpected {result.unexpected_keys}")


_M = TypeVar("_M", bound=nn.Module)


class _GatedBase(nn.Module):
    """What the RNNs and the cells share: gate kind, gate modules, clipping, init, copying from torch."""

    _rec: _Recurrence
    _torch_cls: type[nn.Module]
    _size_fields: tuple[str, ...]

    def _setup_gates(self, gates: str, gate_kwargs: dict[str, Any] | None, clip_gates: bool) -> None:
        self.gates = _check_gates(gates)
        self.gate_kwargs = dict(gate_kwargs or {})
        self.clip_gates = bool(clip_gates)

    def _new_group(self, suffixes: list[str], device: torch.device | str | None) -> _GateActivations | None:
        if self.gates not in ("noisy", "mollified"):
            return None
        group = _GateActivations(self._rec.gates, suffixes, self.hidden_size, self.gates, self.gate_kwargs)
        return group.to(device=device)

    def _calls(self, group: _GateActivations | None, suffix: str, ref: torch.Tensor, n_steps: int) -> list[GateCall]:
        return _gate_calls(self._rec, self.gates, group, suffix, self.hidden_size, ref, n_steps, self.clip_gates)

    def reset_parameters(self) -> None:
        _torch_rnn_init(self)

    def config(self) -> dict[str, Any]:
        """JSON-able constructor kwargs."""
        cfg = {name: getattr(self, name) for name in self._size_fields}
        cfg.update(gates=self.gates, gate_kwargs=dict(self.gate_kwargs), clip_gates=self.clip_gates)
        return cfg

    @classmethod
    def from_torch(cls: type[_M], module: nn.Module, **kwargs: Any) -> _M:
        """Copy a torch module of the matching class (weights, sizes, layout); ``kwargs`` set ``gates``,
        ``gate_kwargs`` and ``clip_gates``."""
        torch_cls = cls._torch_cls  # type: ignore[attr-defined]
        if not isinstance(module, torch_cls):
            raise TypeError(f"{cls.__name__}.from_torch expects {torch_cls.__name__}, got {type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise NotImplementedError("LSTM with proj_size > 0 is not supported")
        ref = next(module.parameters())
        sizes = {name: getattr(module, name) for name in cls._size_fields}  # type: ignore[attr-defined]
        new = cls(**sizes, **kwargs, device=ref.device, dtype=ref.dtype)
        _transfer(new, module)
        new.train(module.training)
        return new


class _NoisyRNNBase(_GatedBase):
    _size_fields = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        gates: str = "noisy",
        gate_kwargs: dict[str, Any] | None = None,
        clip_gates: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError("input_size, hidden_size and num_layers must be positive")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must lie in [0, 1], got {dropout}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self._setup_gates(gates, gate_kwargs, clip_gates)
        self._suffixes = ["", "_reverse"] if bidirectional else [""]
        factory = {"device": device, "dtype": dtype}
        gh = self._rec.n_chunks * hidden_size
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * len(self._suffixes)
            for sfx in self._suffixes:
                shapes = {"weight_ih": (gh, layer_in), "weight_hh": (gh, hidden_size)}
                if bias:
                    shapes.update(bias_ih=(gh,), bias_hh=(gh,))
                for kind, shape in shapes.items():
                    self.register_parameter(f"{kind}_l{layer}{sfx}", nn.Parameter(torch.empty(shape, **factory)))
        groups = [self._new_group(self._suffixes, device) for _ in range(num_layers)]
        self.gate_activations: nn.ModuleList | None = None if groups[0] is None else nn.ModuleList(groups)
        self.reset_parameters()

    def _weights(self, layer: int, sfx: str) -> tuple[torch.Tensor, ...]:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else ("weight_ih", "weight_hh")
        found = [getattr(self, f"{name}_l{layer}{sfx}") for name in names]
        return tuple(found) if self.bias else (found[0], found[1], None, None)

    def forward(self, input: torch.Tensor | PackedSequence, hx: Any = None) -> tuple[Any, Any]:
        """As the torch module's forward: (output, h_n) for the GRU, (output, (h_n, c_n)) for the LSTM."""
        require_floating(input, self)
        output, final = self._forward_impl(input, hx)
        return output, self._rec.pack(final)

    def _forward_impl(
        self, input: torch.Tensor | PackedSequence, hx: Any
    ) -> tuple[torch.Tensor | PackedSequence, list[torch.Tensor]]:
        packed = isinstance(input, PackedSequence)
        lengths: torch.Tensor | None = None
        unbatched = False
        if packed:
            assert isinstance(input, PackedSequence)
            x, lengths = pad_packed_sequence(input, batch_first=False)
        else:
            assert isinstance(input, torch.Tensor)
            x = input
            if x.dim() == 2:
                unbatched = True
                x = x.unsqueeze(1)
                if hx is not None:
                    hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
            elif x.dim() != 3:
                raise ValueError(f"expected a 2-D or 3-D input, got shape {tuple(x.shape)}")
            elif self.batch_first:
                x = x.transpose(0, 1)
        n_steps, batch = x.shape[0], x.shape[1]
        if x.shape[-1] != self.input_size:
            raise ValueError(f"expected input_size={self.input_size}, got {x.shape[-1]}")
        states = self._rec.states(hx) or [self._zeros(batch, x) for _ in range(self._rec.n_states)]
        valid = rev_idx = None
        if lengths is not None:
            steps = torch.arange(n_steps, device=x.device).unsqueeze(1)
            lens = lengths.to(x.device).unsqueeze(0)
            valid = steps < lens
            # Reverse each sequence inside its own length; padding positions map to themselves.
            rev_idx = torch.where(valid, lens - 1 - steps, steps)
        finals: list[list[torch.Tensor]] = [[] for _ in states]
        layer_in = x
        n_dirs = len(self._suffixes)
        for layer in range(self.num_layers):
            dir_outs = []
            group = None if self.gate_activations is None else self.gate_activations[layer]
            for d, sfx in enumerate(self._suffixes):
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, sfx)
                gates = self._sequence_gates(group, sfx, x, n_steps, valid)
                # all timesteps in one matmul; the hand-written LSTM loop takes b_hh in it too
                xp = F.linear(layer_in, w_ih, b_ih if gates is None or b_hh is None else b_ih + b_hh)
                k = layer * n_dirs + d
                state = tuple(s[k] for s in states)
                reverse = sfx == "_reverse"
                if reverse:
                    xp = _reverse_time(xp, rev_idx)
                if gates is None:
                    out, state = _run_direction(self._rec, xp, state, w_hh, b_hh,
                                                self._calls(group, sfx, x, n_steps), valid)
                else:
                    out, h_n, c_n = _LSTMSequence.apply(xp, *state, w_hh, gates[0].p, gates[1].p, gates)
                    state = (h_n, c_n)
                dir_outs.append(_reverse_time(out, rev_idx) if reverse else out)
                for f_list, s in zip(finals, state, strict=True):
                    f_list.append(s)
            layer_in = torch.cat(dir_outs, dim=-1) if n_dirs > 1 else dir_outs[0]
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, p=self.dropout, training=True)
        final = [torch.stack(f_list, 0) for f_list in finals]
        output: torch.Tensor | PackedSequence = layer_in
        if packed:
            assert isinstance(input, PackedSequence) and lengths is not None
            output = self._repack(layer_in, lengths, input)
        elif unbatched:
            output = layer_in.squeeze(1)
            final = [f.squeeze(1) for f in final]
        elif self.batch_first:
            output = layer_in.transpose(0, 1)
        return output, final

    def _sequence_gates(self, group: _GateActivations | None, sfx: str, x: torch.Tensor, n_steps: int,
                        valid: torch.Tensor | None) -> tuple[_Gate, _Gate] | None:
        """The gates of the LSTM's hand-written time loop (:class:`_LSTMSequence`) for one layer and direction where
        it applies; None: the generic loop."""
        if self._rec is not _LSTM or valid is not None:
            return None
        return _fused_lstm_gates(self.gates, group, sfx, self.hidden_size, x, n_steps, self.clip_gates)

    @staticmethod
    def _repack(out: torch.Tensor, lengths: torch.Tensor, like: PackedSequence) -> PackedSequence:
        """Pack (T, B, ·) outputs with the same batch order as the input PackedSequence."""
        if like.sorted_indices is None:
            return pack_padded_sequence(out, lengths, enforce_sorted=True)
        order = like.sorted_indices
        data = pack_padded_sequence(
            out.index_select(1, order.to(out.device)), lengths[order.cpu()], enforce_sorted=True
        )
        return PackedSequence(data.data, data.batch_sizes, like.sorted_indices, like.unsorted_indices)

    def _zeros(self, batch: int, ref: torch.Tensor) -> torch.Tensor:
        n = self.num_layers * len(self._suffixes)
        return torch.zeros(n, batch, self.hidden_size, dtype=ref.dtype, device=ref.device)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
            f"batch_first={self.batch_first}, bidirectional={self.bidirectional}, gates={self.gates!r}"
        )


def _reverse_time(seq: torch.Tensor, rev_idx: torch.Tensor | None) -> torch.Tensor:
    """Flip (T, B, ·) in time; with packed lengths, each sequence inside its own length."""
    return seq.flip(0) if rev_idx is None else seq.gather(0, rev_idx.unsqueeze(-1).expand_as(seq))


class NoisyLSTM(_NoisyRNNBase):
    """Drop-in ``nn.LSTM`` (no ``proj_size``) with configurable gate activations.

    forward(input, hx=None): input (T, B, F_in) / (B, T, F_in) if batch_first / (T, F_in) unbatched /
    PackedSequence; hx = (h0, c0) each (L·D, B, H). Returns output (T, B, D·H) (same layout as the
    input) and (h_n, c_n) each (L·D, B, H), exactly as ``nn.LSTM``.
    """

    _rec = _LSTM
    _torch_cls = nn.LSTM


class NoisyGRU(_NoisyRNNBase):
    """Drop-in ``nn.GRU`` with configurable gate activations.

    forward(input, hx=None): input as for :class:`NoisyLSTM`; hx (L·D, B, H). Returns output
    (T, B, D·H) and h_n (L·D, B, H), exactly as ``nn.GRU``.
    """

    _rec = _GRU
    _torch_cls = nn.GRU


class _NoisyCellBase(_GatedBase):
    _size_fields = ("input_size", "hidden_size", "bias")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        gates: str = "noisy",
        gate_kwargs: dict[str, Any] | None = None,
        clip_gates: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = bool(bias)
        self._setup_gates(gates, gate_kwargs, clip_gates)
        factory = {"device": device, "dtype": dtype}
        gh = self._rec.n_chunks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size, **factory))
        if bias:
            self.bias_ih: nn.Parameter | None = nn.Parameter(torch.empty(gh, **factory))
            self.bias_hh: nn.Parameter | None = nn.Parameter(torch.empty(gh, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.gate_activations: _GateActivations | None = self._new_group([""], device)
        self.reset_parameters()

    def forward(self, input: torch.Tensor, hx: Any = None) -> Any:
        """One step of the shared recurrence: input (B, F_in) or (F_in,); returns h' (GRU) or (h', c') (LSTM)."""
        require_floating(input, self)
        unbatched = input.dim() == 1
        if unbatched:
            input = input.unsqueeze(0)
        state = self._rec.states(hx)
        if state is None:
            state = [torch.zeros(input.shape[0], self.hidden_size, dtype=input.dtype, device=input.device)
                     for _ in range(self._rec.n_states)]
        elif unbatched:
            state = [s.unsqueeze(0) for s in state]
        gx = F.linear(input, self.weight_ih, self.bias_ih)
        calls = self._calls(self.gate_activations, "", input, 1)
        new = self._rec.step(gx, 0, tuple(state), self.weight_hh, self.bias_hh, calls)
        return self._rec.pack([s.squeeze(0) for s in new] if unbatched else new)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, gates={self.gates!r}"


class NoisyLSTMCell(_NoisyCellBase):
    """Drop-in ``nn.LSTMCell``: forward(input (B, F_in) or (F_in,), hx=(h, c)) → (h', c')."""

    _rec = _LSTM
    _torch_cls = nn.LSTMCell


class NoisyGRUCell(_NoisyCellBase):
    """Drop-in ``nn.GRUCell``: forward(input (B, F_in) or (F_in,), hx (B, H)) → h'."""

    _rec = _GRU
    _torch_cls = nn.GRUCell
