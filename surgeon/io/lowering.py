"""Export-time stand-ins for the structured layers: the same maps written as a few small ONNX-friendly ops.

The training layers (``ACDCLinear``, ``FastfoodLinear``) may dispatch through scipy, ``torch.fft`` or
``torch.library`` custom ops, none of which an ONNX exporter can be trusted to trace. :func:`lower_for_export`
returns a copy of a model with every structured layer swapped for a module here, built only from ``MatMul``,
elementwise ops, ``GatherElements`` and reshapes.

Compactness: an N×N DCT or Hadamard matrix would undo the compression (a 9216-wide DCT is 340 MB), so the file
holds only the layer's own numbers (diagonals, biases, permutations as int16 where N ≤ 32767). Every transform
table is *computed inside the graph* from tiny index vectors (``Cos``/``Sin``/``Concat``). The exporter is run
without constant folding so these subgraphs stay in the file as a few nodes; onnxruntime folds them once when
the session is created, so they cost nothing per call.

Speed: the DCT-II of length N = N1⋯NL (thesis eq. 3.27) is Makhoul's reorder onto one complex DFT, and that
DFT is a mixed-radix Cooley–Tukey factorisation: one small dense DFT per level (an f×f ``MatMul`` contracting
one axis of the reshaped rows), with twiddles between levels: about ``2N(N1 + NL) + 4N(N2 + ⋯)``
multiply-adds instead of N². :func:`dct_factors` picks the levels (two for the AlexNet sizes: 9216 = 96·96,
4096 = 64·64; one dense in-graph table for N ≤ 128 or a prime N). The DCT-III is the adjoint of the same chain
(C is orthogonal, so Cᵀ = C⁻¹). Further folding, all exact:

* the DCT's output phase ``e^{-iπk/2N}`` is separable over the digits of k = k1 + N1·k2 + N1·N2·k3 + ⋯, so
  each digit's factor is folded into that level's twiddles (or into the last DFT matrix), and only the real
  output half of the last level is formed;
* the ε₀ = 1/√2 row scale of eq. 3.27 is folded into the k = 0 entries of d (×½) and b (×1/√2);
* the spectrum is kept in the (k1, ..., kL) layout the matmuls produce, with d and b stored permuted to match,
  so no transposes are needed anywhere;
* the inter-factor permutation Π_k, Makhoul's reorder and its inverse compose into one gather per factor,
  written as ``Expand`` + ``GatherElements`` (onnxruntime's last-axis ``Gather`` measured ~10× slower), on int32
  indices where torch's ``gather`` takes them (``GATHER_INDEX``): the expanded index is written every call, and
  int64 cost twice the bytes (10–25 ms of a ~170 ms ACDC-12 call at N = 4096, batch 256, in onnxruntime's
  profile);
* the spectrum stays in the view the last level leaves (:meth:`LoweredACDC._spectral_view`) and the adjoint
  starts from it, so a factor reshapes only into and out of the gather's flat rows: ACDC-12 at N = 4096 has 377
  nodes after onnxruntime's optimiser instead of 449 (5–10 % faster at batch 1, level at 8–256).

Tried and not kept: real and imaginary parts stacked on an axis of their own, so that each level is one
``MatMul`` twice as wide and the twiddle two products around a ``Gather`` swapping the parts (305 nodes for
ACDC-12 at N = 4096 against 449 then): 1.1–1.2× faster at batch 1, but 1.3–1.5×
slower at batch 64–256 (the swap copies the complex intermediate and the wider GEMMs ran slower), in one
interleaved run of both.

A prime N (or one whose factors are very unbalanced) uses one level: the file is still compact, but the
in-graph N×N table costs N² memory at run time and N² work per transform.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from surgeon.layers.acdc import ACDCLinear
from surgeon.layers.fastfood import FastfoodLinear
from surgeon.ops.hadamard import kronecker_split
from surgeon.primitives import activation_spec, compute_dtype

# Cost model for choosing the Cooley–Tukey factors, in multiply-add equivalents per element per transform: a
# real→complex first level costs 2·f, a complex middle level 4·f, the complex→real last level 2·f, with f
# floored at 32 (onnxruntime's GEMMs lose efficiency below that), and each extra level pays for its twiddle and
# re/im bookkeeping (~8 memory-bound elementwise passes). Calibrated on onnxruntime 1.32 CPU with the AlexNet
# head (N = 9216, 4096): two levels (96·96, 64·64) beat three or four there; three win beyond N ≈ 16384.
_TWIDDLE_COST = 160
_GEMM_FLOOR = 32
_MAX_LEVELS = 3


def _cost(factors: tuple[int, ...]) -> int:
    if len(factors) == 1:
        return factors[0]
    eff = [max(f, _GEMM_FLOOR) for f in factors]
    return 2 * eff[0] + 4 * sum(eff[1:-1]) + 2 * eff[-1] + _TWIDDLE_COST * (len(factors) - 1)


def _factorisations(n: int, levels: int) -> list[tuple[int, ...]]:
    if levels == 1:
        return [(n,)]
    out = []
    for f in range(2, n):
        if n % f == 0:
            out += [(f, *rest) for rest in _factorisations(n // f, levels - 1) if min(rest) >= 2]
    return out


def dct_factors(n: int, max_levels: int = _MAX_LEVELS) -> tuple[int, ...]:
    """Cooley–Tukey factors (N1, ..., NL) of n, ∏ = n, chosen by the cost model above (a prime gives (n,))."""
    best = (n,)
    for levels in range(2, max_levels + 1):
        for candidate in _factorisations(n, levels):
            if _cost(candidate) < _cost(best):
                best = candidate
    return best


# The gather index dtype of the exported graph: int32 halves what each call's ``Expand`` writes, but eager
# ``torch.gather`` (which the exporter traces and the parity check runs) takes int32 only from torch 2.8.
GATHER_INDEX = torch.int32 if torch.torch_version.TorchVersion(torch.__version__) >= (2, 8) else torch.int64


def _index_buffer(index: torch.Tensor, bound: int) -> torch.Tensor:
    # int16 halves the file's permutation bytes versus int32 (a quarter versus int64); the graph casts them back.
    dtype = torch.int16 if bound <= 2**15 else torch.int32
    return index.to(dtype).contiguous()


def gather_last(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows (M, N) -> rows[:, index] for a 1-D index (length L): (M, L).

    Written as ``gather`` on an expanded index (ONNX ``Expand`` + ``GatherElements``): onnxruntime's CPU
    ``Gather`` along the last axis copies element by element and measured ~10× slower on (8, 9216) rows. A
    full-width index expands to ``rows``' own shape (``Shape`` + ``Expand``); building the target shape from the
    batch size instead exported as eight nodes per gather (Shape, Gather, Unsqueeze, Concat, ConstantOfShape,
    Equal, Where, Expand), a sixth of an ACDC-12 graph's nodes, each paid per call.
    """
    if index.shape[0] == rows.shape[-1]:
        return torch.gather(rows, -1, index.expand_as(rows))
    return torch.gather(rows, -1, index.unsqueeze(0).expand(rows.shape[0], index.shape[0]))


def makhoul_order(n: int) -> torch.Tensor:
    """Makhoul's reorder: even samples ascending, then odd samples descending; v[m] = x[order[m]]."""
    return torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)])


class LoweredACDC(nn.Module):
    """Export form of :class:`ACDCLinear`: (..., in) -> (..., out), identical map (fp32 rounding aside).

    Buffers (the only numbers in the exported file): ``a`` (K, N) in Makhoul order; ``d``, ``b`` (K, N) in
    spectral layout with ε folded in; ``gathers`` (K+1, N) composed reorder/permutation indices (int16/int32);
    ``index`` a float64 ``arange`` from which every DFT table is computed in-graph. ``factors`` overrides the
    Cooley–Tukey split chosen by :func:`dct_factors` (their product must be N).

    Transform layout: rows (M, N) are viewed as (M, P, f_j, R) around level j, with P = f_1⋯f_{j-1} the
    frequencies already formed and R = f_{j+1}⋯f_L the samples not yet transformed; the frequency at flat
    position p = (k_1, ..., k_L) (row-major) is k = k_1 + f_1·k_2 + f_1·f_2·k_3 + ⋯ (decimation in time).
    """

    def __init__(self, layer: ACDCLinear, factors: tuple[int, ...] | None = None) -> None:
        super().__init__()
        n, depth = layer.size, layer.depth
        if factors is not None and math.prod(factors) != n:
            raise ValueError(f"factors {factors} do not multiply to the layer's working size {n}")
        self.in_features, self.out_features, self.size, self.depth = (layer.in_features, layer.out_features,
                                                                       n, depth)
        self.activation = layer.activation
        self.factors = tuple(factors) if factors is not None else dct_factors(n)
        with torch.no_grad():
            order = makhoul_order(n)
            inverse = torch.argsort(order)
            freq = self._frequencies(self.factors)
            eps = torch.ones(n, dtype=torch.float64)
            eps[0] = 1 / math.sqrt(2.0)
            a = layer.a.detach()
            self.register_buffer("a", a[:, order].clone())
            d = layer.d.detach().double() * eps.square()
            self.register_buffer("d", d[:, freq].to(a.dtype).contiguous())
            if layer.b is not None:
                b = layer.b.detach().double() * eps
                self.register_buffer("b", b[:, freq].to(a.dtype).contiguous())
            else:
                self.register_buffer("b", None)
            # Between factors k and k+1: v_{k+1} = act(w_k)[order⁻¹[Π_k[order]]] (w_k is in Makhoul order).
            steps = [order]
            if layer.perms is not None:
                steps += [inverse[perm.cpu()[order]] for perm in layer.perms]
            self.composed = layer.perms is not None
            steps.append(torch.cat([inverse[: layer.out_features],
                                    torch.zeros(n - layer.out_features, dtype=torch.long)]))
            self.register_buffer("gathers", _index_buffer(torch.stack(steps), n).to(a.device))
            longest = max(max(self.factors), n // self.factors[0])
            self.register_buffer("index", torch.arange(longest, dtype=torch.float64, device=a.device))

    @staticmethod
    def _frequencies(factors: tuple[int, ...]) -> torch.Tensor:
        """freq[p]: the DCT frequency stored at flat spectral position p."""
        n = math.prod(factors)
        digits = torch.arange(n)
        freq = torch.zeros(n, dtype=torch.long)
        for axis, f in enumerate(factors):
            stride = math.prod(factors[axis + 1:])       # row-major position of digit k_axis
            weight = math.prod(factors[:axis])            # its weight in the frequency
            freq += ((digits // stride) % f) * weight
        return freq

    def _tables(self, dtype: torch.dtype) -> list[tuple[torch.Tensor, ...]]:
        """Per level (cos, sin) tables, computed from ``index`` in float64 and cast once.

        Level j (not last): DFT_f[k, n] = e^{-2πi nk/f} (symmetric), then twiddles (f_j, R_j)
        e^{-2πi k m / (f_j R_j)} · e^{-iπ w_j k / 2N} where w_j = f_1⋯f_{j-1} (the k_j part of the DCT output
        phase). Last level: e^{-2πi nk/f} · e^{-iπ w_L k / 2N} (k the column). sqrt(2/N) goes into level 1.
        """
        n, factors = self.size, self.factors
        c0 = math.sqrt(2.0 / n)
        tables = []
        for j, f in enumerate(factors):
            r = self.index[:f]
            weight = math.prod(factors[:j])
            ang = (2 * math.pi / f) * r.unsqueeze(1) * r.unsqueeze(0)
            scale = c0 if j == 0 else 1.0
            if j == len(factors) - 1:
                ang = ang + (math.pi * weight / (2 * n)) * r.unsqueeze(0)
                tables.append(((scale * torch.cos(ang)).to(dtype), (-scale * torch.sin(ang)).to(dtype)))
                break
            rest = math.prod(factors[j + 1:])
            m = self.index[:rest]
            tw = ((2 * math.pi / (f * rest)) * r.unsqueeze(1) * m.unsqueeze(0)
                  + (math.pi * weight / (2 * n)) * r.unsqueeze(1))
            tables.append(((scale * torch.cos(ang)).to(dtype), (-scale * torch.sin(ang)).to(dtype),
                           torch.cos(tw).to(dtype), (-torch.sin(tw)).to(dtype)))
        return tables

    def _view(self, t: torch.Tensor, j: int) -> torch.Tensor:
        f = self.factors
        return t.reshape(-1, math.prod(f[:j]), f[j], math.prod(f[j + 1:]))

    def _spectral_view(self) -> tuple[int, ...]:
        """The shape (less the rows) of a spectrum as :meth:`_dct` returns it: (N,) for one level, else
        (f_1⋯f_{L-2}, f_{L-1}, f_L), whose row-major order is the spectral layout of d and b."""
        f = self.factors
        return (self.size,) if len(f) == 1 else (math.prod(f[:-2]), f[-2], f[-1])

    def _dct(self, v: torch.Tensor, tables: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """DCT-II without the ε₀ row scale: rows (M, N) in Makhoul order -> (M, *spectral view) in spectral
        layout (:meth:`_spectral_view`)."""
        levels = len(self.factors)
        if levels == 1:
            return v @ tables[0][0]
        re = im = None
        for j in range(levels - 1):
            f_re, f_im, t_re, t_im = tables[j]
            if j == 0:   # real input: one real matmul per part
                x = self._view(v, 0)
                re, im = f_re @ x, f_im @ x
            else:        # complex (re + i·im) times complex DFT matrix
                re, im = self._view(re, j), self._view(im, j)
                re, im = f_re @ re - f_im @ im, f_re @ im + f_im @ re
            re, im = re * t_re - im * t_im, re * t_im + im * t_re
        f_re, f_im = tables[-1]
        # The last level contracts the last axis of the level-(L-1) view as it stands: no reshape nodes (each
        # one onnxruntime dispatches per call; a factor had eight), and the spectrum stays in that view.
        return re @ f_re - im @ f_im

    def _dct_adjoint(self, h: torch.Tensor, tables: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """The transpose of :meth:`_dct` (its inverse: the DCT is orthogonal), every step reversed: a spectrum
        (M, *spectral view) -> rows (M, N)."""
        levels = len(self.factors)
        if levels == 1:
            return h @ tables[0][0].transpose(0, 1)
        f_re, f_im = tables[-1]
        # h is the spectrum in :meth:`_dct`'s output view; negate the (constant, folded) table rather than the
        # activations: one elementwise pass fewer
        re, im = h @ f_re.transpose(0, 1), h @ (-f_im).transpose(0, 1)
        for j in range(levels - 2, -1, -1):
            f_re, f_im, t_re, t_im = tables[j]
            if j < levels - 2:   # the level-(L-1) view is the one h arrived in
                re, im = self._view(re, j), self._view(im, j)
            re, im = re * t_re + im * t_im, im * t_re - re * t_im        # conjugate twiddle
            if j == 0:   # adjoint of real -> complex: Re(F^H ·); F is symmetric
                return (f_re @ re + f_im @ im).reshape(-1, self.size)
            re, im = f_re @ re + f_im @ im, f_re @ im - f_im @ re       # F^H = conj(F) for symmetric F
        raise AssertionError("unreachable")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        n = self.size
        lead = x.shape[:-1]
        c = compute_dtype(self.a.dtype)  # fp16 files keep fp16 numbers but transform in fp32
        tables = self._tables(c)
        a, d, b = (None if t is None else t.to(c) for t in (self.a, self.d, self.b))
        spectral = self._spectral_view()
        d, b = d.reshape(-1, *spectral), None if b is None else b.reshape(-1, *spectral)   # folded once
        gathers = self.gathers.to(GATHER_INDEX)
        rows = x.reshape(-1, self.in_features).to(c)
        if n > self.in_features:
            rows = nn.functional.pad(rows, (0, n - self.in_features))
        v = gather_last(rows, gathers[0]) * a[0]
        for k in range(self.depth):
            h = self._dct(v, tables) * d[k]
            if b is not None:
                h = h + b[k]
            w = self._dct_adjoint(h, tables)
            if k < self.depth - 1:
                w = activation_spec(self.activation).apply(w)            # elementwise, so it commutes with the gather
                if self.composed:
                    w = gather_last(w, gathers[k + 1])
                v = w * a[k + 1]
            else:
                v = w
        out = gather_last(v, gathers[-1][: self.out_features])
        return out.reshape(*lead, self.out_features).to(x.dtype)


class LoweredFastfood(nn.Module):
    """Export form of :class:`FastfoodLinear`: ``y = S Ĥ G Π Ĥ B x + bias``, (..., in) -> (..., out).

    Ĥ (d×d, orthonormal Walsh–Hadamard) is applied as the Kronecker product of small Sylvester matrices
    (≤ 128 wide, each scaled by 1/√size), each built in-graph from a 1×1 seed by log2(size) ``Concat`` steps,
    and contracted against its own axis of the reshaped rows with a left or right ``MatMul`` (no transposes).
    Π is one ``Gather`` over the flattened (blocks·d) rows.
    """

    def __init__(self, layer: FastfoodLinear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.d, self.blocks = layer.d, layer.blocks
        self.factors = kronecker_split(self.d)
        with torch.no_grad():
            for name in ("scale", "gauss", "binary"):
                self.register_buffer(name, getattr(layer, name).detach().clone())
            offsets = torch.arange(self.blocks, device=layer.perm.device).unsqueeze(1) * self.d
            flat = (layer.perm + offsets).reshape(-1).cpu()
            self.register_buffer("perm", _index_buffer(flat, self.blocks * self.d).to(layer.perm.device))
            self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
            self.register_buffer("seed", torch.ones(1, 1, dtype=self.scale.dtype))

    def _hadamard(self, size: int) -> torch.Tensor:
        h = self.seed.to(compute_dtype(self.seed.dtype))
        while h.shape[0] < size:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        return h * (1.0 / math.sqrt(size))

    def _fwht(self, rows: torch.Tensor) -> torch.Tensor:
        """Orthonormal Walsh–Hadamard along the last dim of rows (M, blocks, d)."""
        d = self.d
        matrices = {size: self._hadamard(size) for size in set(self.factors)}
        before = 1
        for i, size in enumerate(self.factors):
            after = d // (before * size)
            if i == len(self.factors) - 1:
                rows = rows.reshape(-1, self.blocks, before, size) @ matrices[size]
            else:
                rows = matrices[size] @ rows.reshape(-1, self.blocks * before, size, after)
            before *= size
        return rows.reshape(-1, self.blocks, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        lead, dtype = x.shape[:-1], x.dtype
        c = compute_dtype(self.scale.dtype)  # fp16 files keep fp16 numbers but transform in fp32
        x = x.to(c)
        if self.d > self.in_features:
            x = nn.functional.pad(x, (0, self.d - self.in_features))
        rows = x.reshape(-1, 1, self.d) * self.binary.to(c)                  # (M, blocks, d)
        rows = self._fwht(rows).reshape(-1, self.blocks * self.d)
        rows = gather_last(rows, self.perm.to(GATHER_INDEX)).reshape(-1, self.blocks, self.d)
        rows = self._fwht(rows * self.gauss.to(c)) * self.scale.to(c)
        out = rows.reshape(-1, self.blocks * self.d)[:, : self.out_features]
        if self.bias is not None:
            out = out + self.bias.to(c)
        return out.reshape(*lead, self.out_features).to(dtype)


LOWERINGS: dict[type[nn.Module], type[nn.Module]] = {ACDCLinear: LoweredACDC, FastfoodLinear: LoweredFastfood}


def lower_module(module: nn.Module) -> nn.Module | None:
    """The export form of one module, or None when it needs none."""
    for kind, lowered in LOWERINGS.items():
        if isinstance(module, kind):
            return lowered(module)
    return None


def lower_for_export(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every structured layer replaced by its export form.

    The original model is left untouched. Returns the copy (the root itself is replaced when it is a
    structured layer).
    """
    clone = copy.deepcopy(model).eval()
    root = lower_module(clone)
    if root is not None:
        return root.eval()
    for name, module in list(clone.named_modules()):
        lowered = lower_module(module)
        if lowered is None:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = clone.get_submodule(parent_name) if parent_name else clone
        setattr(parent, leaf, lowered.eval())
    return clone
