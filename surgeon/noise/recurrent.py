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
The input projections of all timesteps are computed with a single matmul per layer and direction;
only the recurrent matmul runs in the Python time loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from surgeon.layers.checks import require_floating
from surgeon.noise.base import NoiseModule
from surgeon.noise.hard import hard_sigmoid, hard_tanh
from surgeon.noise.mollified import MollifiedActivation
from surgeon.noise.noisy import NoisyHardSigmoid, NoisyHardTanh

__all__ = ["GATE_KINDS", "NoisyGRU", "NoisyGRUCell", "NoisyLSTM", "NoisyLSTMCell"]

GATE_KINDS: tuple[str, ...] = ("soft", "hard", "noisy", "mollified")

Act = Callable[[torch.Tensor], torch.Tensor]

# Gate name -> base nonlinearity. "c" is the tanh applied to the LSTM cell state.
_LSTM_GATES = {"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid", "c": "tanh"}
_GRU_GATES = {"r": "sigmoid", "z": "sigmoid", "n": "tanh"}


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
    """The gate activations of one recurrent layer (all directions): one annealer layer group."""

    def __init__(
        self,
        gate_spec: dict[str, str],
        suffixes: list[str],
        hidden_size: int,
        gates: str,
        gate_kwargs: dict[str, Any],
    ) -> None:
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

    def table(self, suffix: str, gate_spec: dict[str, str]) -> dict[str, Act]:
        return {name: self.acts[name + suffix] for name in gate_spec}


def _fixed_table(gate_spec: dict[str, str], gates: str) -> dict[str, Act]:
    if gates == "soft":
        funcs: dict[str, Act] = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}
    else:
        funcs = {"sigmoid": hard_sigmoid, "tanh": hard_tanh}
    return {name: funcs[base] for name, base in gate_spec.items()}


def _lstm_step(
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None,
    act: dict[str, Act],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step. gx: (B, 4H) input projection incl. b_ih; h, c: (B, H)."""
    gates = gx + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = act["f"](f) * c + act["i"](i) * act["g"](g)
    h_new = act["o"](o) * act["c"](c_new)
    return h_new, c_new


def _gru_step(
    gx: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None, act: dict[str, Act]
) -> torch.Tensor:
    """One GRU step. gx: (B, 3H) input projection incl. b_ih; h: (B, H)."""
    gh = F.linear(h, w_hh, b_hh)
    x_r, x_z, x_n = gx.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = act["r"](x_r + h_r)
    z = act["z"](x_z + h_z)
    n = act["n"](x_n + r * h_n)
    return (1.0 - z) * n + z * h


class _NoisyRNNBase(nn.Module):
    _gate_spec: dict[str, str]
    _n_chunks: int
    _torch_cls: type[nn.Module]

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
        self.gates = _check_gates(gates)
        self.gate_kwargs = dict(gate_kwargs or {})
        self._suffixes = ["", "_reverse"] if bidirectional else [""]
        factory = {"device": device, "dtype": dtype}
        gh = self._n_chunks * hidden_size
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * len(self._suffixes)
            for sfx in self._suffixes:
                self.register_parameter(
                    f"weight_ih_l{layer}{sfx}", nn.Parameter(torch.empty(gh, layer_in, **factory))
                )
                self.register_parameter(
                    f"weight_hh_l{layer}{sfx}", nn.Parameter(torch.empty(gh, hidden_size, **factory))
                )
                if bias:
                    self.register_parameter(
                        f"bias_ih_l{layer}{sfx}", nn.Parameter(torch.empty(gh, **factory))
                    )
                    self.register_parameter(
                        f"bias_hh_l{layer}{sfx}", nn.Parameter(torch.empty(gh, **factory))
                    )
        if self.gates in ("noisy", "mollified"):
            self.gate_activations: nn.ModuleList | None = nn.ModuleList(
                _GateActivations(self._gate_spec, self._suffixes, hidden_size, self.gates, self.gate_kwargs)
                for _ in range(num_layers)
            )
            self.gate_activations.to(device=device)
        else:
            self.gate_activations = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _torch_rnn_init(self)

    def _weights(
        self, layer: int, sfx: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        w_ih = getattr(self, f"weight_ih_l{layer}{sfx}")
        w_hh = getattr(self, f"weight_hh_l{layer}{sfx}")
        b_ih = getattr(self, f"bias_ih_l{layer}{sfx}") if self.bias else None
        b_hh = getattr(self, f"bias_hh_l{layer}{sfx}") if self.bias else None
        return w_ih, w_hh, b_ih, b_hh

    def _acts(self, layer: int, sfx: str) -> dict[str, Act]:
        if self.gate_activations is None:
            return _fixed_table(self._gate_spec, self.gates)
        group = self.gate_activations[layer]
        assert isinstance(group, _GateActivations)
        return group.table(sfx, self._gate_spec)

    def _run_direction(
        self,
        xp: torch.Tensor,
        state: tuple[torch.Tensor, ...],
        w_hh: torch.Tensor,
        b_hh: torch.Tensor | None,
        act: dict[str, Act],
        valid: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run the recurrence over xp: (T, B, G·H) → outputs (T, B, H) and the final state."""
        outs = []
        for t in range(xp.shape[0]):
            new = self._step(xp[t], state, w_hh, b_hh, act)
            if valid is not None:
                # Padded steps of packed sequences keep the state and output zeros, as torch does.
                m = valid[t].unsqueeze(-1)
                new = tuple(torch.where(m, n, s) for n, s in zip(new, state, strict=True))
                outs.append(torch.where(m, new[0], torch.zeros_like(new[0])))
            else:
                outs.append(new[0])
            state = new
        return torch.stack(outs, 0), state

    def _step(
        self,
        gx: torch.Tensor,
        state: tuple[torch.Tensor, ...],
        w_hh: torch.Tensor,
        b_hh: torch.Tensor | None,
        act: dict[str, Act],
    ) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError  # pragma: no cover - defined by NoisyLSTM / NoisyGRU

    def _initial_state(self, hx: Any, batch: int, ref: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - defined by NoisyLSTM / NoisyGRU

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
        states = self._initial_state(hx, batch, x)  # each (L·D, B, H)
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
            for d, sfx in enumerate(self._suffixes):
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, sfx)
                xp = F.linear(layer_in, w_ih, b_ih)  # all timesteps in one matmul
                k = layer * n_dirs + d
                state = tuple(s[k] for s in states)
                reverse = sfx == "_reverse"
                if reverse:
                    xp = xp.flip(0) if rev_idx is None else xp.gather(0, rev_idx.unsqueeze(-1).expand_as(xp))
                out, state = self._run_direction(xp, state, w_hh, b_hh, self._acts(layer, sfx), valid)
                if reverse:
                    out = (
                        out.flip(0)
                        if rev_idx is None
                        else out.gather(0, rev_idx.unsqueeze(-1).expand_as(out))
                    )
                dir_outs.append(out)
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

    def config(self) -> dict[str, Any]:
        """JSON-able constructor kwargs."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "batch_first": self.batch_first,
            "dropout": self.dropout,
            "bidirectional": self.bidirectional,
            "gates": self.gates,
            "gate_kwargs": dict(self.gate_kwargs),
        }

    @classmethod
    def _from_torch_impl(cls, module: nn.Module, **kwargs: Any) -> Any:
        if not isinstance(module, cls._torch_cls):
            raise TypeError(
                f"{cls.__name__}.from_torch expects {cls._torch_cls.__name__}, got {type(module).__name__}"
            )
        if getattr(module, "proj_size", 0):
            raise NotImplementedError("LSTM with proj_size > 0 is not supported")
        ref = next(module.parameters())
        cfg = {
            "input_size": module.input_size,
            "hidden_size": module.hidden_size,
            "num_layers": module.num_layers,
            "bias": module.bias,
            "batch_first": module.batch_first,
            "dropout": float(module.dropout),
            "bidirectional": module.bidirectional,
        }
        cfg.update(kwargs)
        new = cls(**cfg, device=ref.device, dtype=ref.dtype)
        _transfer(new, module)
        new.train(module.training)
        return new

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
            f"batch_first={self.batch_first}, bidirectional={self.bidirectional}, gates={self.gates!r}"
        )


def _transfer(new: nn.Module, old: nn.Module) -> None:
    """Copy a torch RNN's parameters; only the gate activations' own parameters may be missing."""
    result = new.load_state_dict(old.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("gate_activations.")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"state_dict mismatch: missing {missing}, unexpected {result.unexpected_keys}")


class NoisyLSTM(_NoisyRNNBase):
    """Drop-in ``nn.LSTM`` (no ``proj_size``) with configurable gate activations.

    forward(input, hx=None): input (T, B, F_in) / (B, T, F_in) if batch_first / (T, F_in) unbatched /
    PackedSequence; hx = (h0, c0) each (L·D, B, H). Returns output (T, B, D·H) (same layout as the
    input) and (h_n, c_n) each (L·D, B, H), exactly as ``nn.LSTM``.
    """

    _gate_spec = _LSTM_GATES
    _n_chunks = 4
    _torch_cls = nn.LSTM

    def _step(
        self,
        gx: torch.Tensor,
        state: tuple[torch.Tensor, ...],
        w_hh: torch.Tensor,
        b_hh: torch.Tensor | None,
        act: dict[str, Act],
    ) -> tuple[torch.Tensor, ...]:
        return _lstm_step(gx, state[0], state[1], w_hh, b_hh, act)

    def _initial_state(self, hx: Any, batch: int, ref: torch.Tensor) -> list[torch.Tensor]:
        if hx is None:
            return [self._zeros(batch, ref), self._zeros(batch, ref)]
        h0, c0 = hx
        return [h0, c0]

    def forward(
        self, input: torch.Tensor | PackedSequence, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor | PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
        require_floating(input, self)
        output, (h_n, c_n) = self._forward_impl(input, hx)
        return output, (h_n, c_n)

    @classmethod
    def from_torch(cls, module: nn.LSTM, **kwargs: Any) -> NoisyLSTM:
        """Copy an ``nn.LSTM`` (weights, sizes, layout); ``kwargs`` set ``gates``/``gate_kwargs``."""
        return cls._from_torch_impl(module, **kwargs)


class NoisyGRU(_NoisyRNNBase):
    """Drop-in ``nn.GRU`` with configurable gate activations.

    forward(input, hx=None): input as for :class:`NoisyLSTM`; hx (L·D, B, H). Returns output
    (T, B, D·H) and h_n (L·D, B, H), exactly as ``nn.GRU``.
    """

    _gate_spec = _GRU_GATES
    _n_chunks = 3
    _torch_cls = nn.GRU

    def _step(
        self,
        gx: torch.Tensor,
        state: tuple[torch.Tensor, ...],
        w_hh: torch.Tensor,
        b_hh: torch.Tensor | None,
        act: dict[str, Act],
    ) -> tuple[torch.Tensor, ...]:
        return (_gru_step(gx, state[0], w_hh, b_hh, act),)

    def _initial_state(self, hx: Any, batch: int, ref: torch.Tensor) -> list[torch.Tensor]:
        return [self._zeros(batch, ref) if hx is None else hx]

    def forward(
        self, input: torch.Tensor | PackedSequence, hx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
        require_floating(input, self)
        output, (h_n,) = self._forward_impl(input, hx)
        return output, h_n

    @classmethod
    def from_torch(cls, module: nn.GRU, **kwargs: Any) -> NoisyGRU:
        """Copy an ``nn.GRU`` (weights, sizes, layout); ``kwargs`` set ``gates``/``gate_kwargs``."""
        return cls._from_torch_impl(module, **kwargs)


class _NoisyCellBase(nn.Module):
    _gate_spec: dict[str, str]
    _n_chunks: int
    _torch_cls: type[nn.Module]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        gates: str = "noisy",
        gate_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = bool(bias)
        self.gates = _check_gates(gates)
        self.gate_kwargs = dict(gate_kwargs or {})
        factory = {"device": device, "dtype": dtype}
        gh = self._n_chunks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size, **factory))
        if bias:
            self.bias_ih: nn.Parameter | None = nn.Parameter(torch.empty(gh, **factory))
            self.bias_hh: nn.Parameter | None = nn.Parameter(torch.empty(gh, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if self.gates in ("noisy", "mollified"):
            self.gate_activations: _GateActivations | None = _GateActivations(
                self._gate_spec, [""], hidden_size, self.gates, self.gate_kwargs
            ).to(device=device)
        else:
            self.gate_activations = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _torch_rnn_init(self)

    def _acts(self) -> dict[str, Act]:
        if self.gate_activations is None:
            return _fixed_table(self._gate_spec, self.gates)
        return self.gate_activations.table("", self._gate_spec)

    def _zeros(self, input: torch.Tensor) -> torch.Tensor:
        return torch.zeros(input.shape[0], self.hidden_size, dtype=input.dtype, device=input.device)

    def config(self) -> dict[str, Any]:
        """JSON-able constructor kwargs."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "bias": self.bias,
            "gates": self.gates,
            "gate_kwargs": dict(self.gate_kwargs),
        }

    @classmethod
    def _from_torch_impl(cls, module: nn.Module, **kwargs: Any) -> Any:
        if not isinstance(module, cls._torch_cls):
            raise TypeError(
                f"{cls.__name__}.from_torch expects {cls._torch_cls.__name__}, got {type(module).__name__}"
            )
        ref = module.weight_ih
        cfg = {"input_size": module.input_size, "hidden_size": module.hidden_size, "bias": module.bias}
        cfg.update(kwargs)
        new = cls(**cfg, device=ref.device, dtype=ref.dtype)
        _transfer(new, module)
        new.train(module.training)
        return new

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, gates={self.gates!r}"


class NoisyLSTMCell(_NoisyCellBase):
    """Drop-in ``nn.LSTMCell``: forward(input (B, F_in) or (F_in,), hx=(h, c)) → (h', c')."""

    _gate_spec = _LSTM_GATES
    _n_chunks = 4
    _torch_cls = nn.LSTMCell

    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        require_floating(input, self)
        unbatched = input.dim() == 1
        if unbatched:
            input = input.unsqueeze(0)
            hx = None if hx is None else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = (self._zeros(input), self._zeros(input)) if hx is None else hx
        gx = F.linear(input, self.weight_ih, self.bias_ih)
        h, c = _lstm_step(gx, h, c, self.weight_hh, self.bias_hh, self._acts())
        if unbatched:
            return h.squeeze(0), c.squeeze(0)
        return h, c

    @classmethod
    def from_torch(cls, module: nn.LSTMCell, **kwargs: Any) -> NoisyLSTMCell:
        """Copy an ``nn.LSTMCell``; ``kwargs`` set ``gates``/``gate_kwargs``."""
        return cls._from_torch_impl(module, **kwargs)


class NoisyGRUCell(_NoisyCellBase):
    """Drop-in ``nn.GRUCell``: forward(input (B, F_in) or (F_in,), hx (B, H)) → h'."""

    _gate_spec = _GRU_GATES
    _n_chunks = 3
    _torch_cls = nn.GRUCell

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        require_floating(input, self)
        unbatched = input.dim() == 1
        if unbatched:
            input = input.unsqueeze(0)
            hx = None if hx is None else hx.unsqueeze(0)
        h = self._zeros(input) if hx is None else hx
        gx = F.linear(input, self.weight_ih, self.bias_ih)
        h = _gru_step(gx, h, self.weight_hh, self.bias_hh, self._acts())
        return h.squeeze(0) if unbatched else h

    @classmethod
    def from_torch(cls, module: nn.GRUCell, **kwargs: Any) -> NoisyGRUCell:
        """Copy an ``nn.GRUCell``; ``kwargs`` set ``gates``/``gate_kwargs``."""
        return cls._from_torch_impl(module, **kwargs)
