"""Chunked-scan S4 convolution: linear in ``L``, made of matmuls and elementwise ops only.

A layer in diagonal form (:mod:`.diagonal`: ``K_k[l] = Re sum_m w[k, m] mu_m^l``, ``|mu| < 1``) is a
diagonal linear time-invariant system. Split time into chunks of ``q`` bins, ``t = cq + i``:

- causal part: ``y[t] = sum_{j <= i} K_0[i - j] u[cq + j] + Re sum_m w_0m mu_m^(i + 1) S_m[c]`` with the
  state ``S_m[c] = sum_{s < cq} mu_m^(cq - 1 - s) u[s]``, i.e. ``S[c + 1] = a S[c] + x[c]``, ``a = mu^q`` and
  ``x_m[c] = sum_j mu_m^(q - 1 - j) u[cq + j]``;
- anti-causal part (bidirectional, ``y[t] += sum_{l >= 0} K_1[l] u[t + 1 + l]``): the mirror image, with
  ``G_m[c] = sum_{s >= (c + 1) q} mu_m^(s - (c + 1) q) u[s]`` read out by ``w_1m mu_m^(q - 1 - i)``.

The in-chunk parts of both directions form one ``q x q`` Toeplitz matrix; states enter and leave by one
matmul per chunk (``[q] -> [2M]`` real/imaginary pairs and back). The chunk-to-chunk recurrence is a
blocked scan: blocks of ``P`` chunks are scanned by one matmul with the ``P x P`` matrix ``a^(p - p')``,
whose input also takes the state carried into the block (weighted by ``a^(p + 1)``): the blocks' totals,
scanned by the same scheme one level up (decay ``a^P``). ``levels`` such levels cover :func:`capacity`
bins, so an exported graph needs no loop; levels above what a sequence needs work on one entry per trial.

Sequences of up to ``WHOLE`` bins are one chunk of their own length (a plain Toeplitz product, no state);
longer ones use chunks of ``q = CHUNK`` bins. Cost ``O(B H L (q + M))``, memory ``O(B H L (1 + M / q))``.
Only ``mu^k`` for ``k <= WHOLE`` and ``a_level^k`` for ``k <= P`` are tabulated (computed in float64, kept
in float32): no ``sin(l theta)`` at large ``l`` in single precision, and the scan is stable (``|a| < 1``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .diagonal import DiagonalForm
from .fftconv import toeplitz

# Bins per chunk (q) for sequences longer than WHOLE, chunks per scan block (P), and the longest sequence
# convolved as one chunk: benchmarks/results/long_recordings_cpu.md.
CHUNK = 128
BLOCK = 16
WHOLE = 256
# Scan levels tabulated for the torch layer: sequences up to capacity(MAX_LEVELS) bins (over 10^9).
MAX_LEVELS = 5


def scan_levels(n_states: int, block: int = BLOCK) -> int:
    """Scan levels above the first for ``n_states`` chunk states (0 when they fit one block)."""
    levels = 0
    while n_states > block:
        n_states = -(-n_states // block)
        levels += 1
    return levels


def capacity(levels: int, chunk: int = CHUNK, block: int = BLOCK) -> int:
    """Longest sequence (bins) that ``levels`` scan levels convolve exactly (``chunk - 1`` more states)."""
    return chunk * (block ** (levels + 1) + 1)


@dataclass
class ChunkTables:
    """Tables of one layer's diagonal form, enough for the chunked convolution at any length.

    ``taps [n_kernels, H, S]``: the kernels' first ``S = WHOLE`` taps. ``powers [2, H, M, S + 1]``: real and
    imaginary parts of ``mu^k``. ``weights [2, n_kernels, H, M]``: of ``w``.
    ``level_powers [levels + 1, 2, H, M, P + 1]``: of ``a_l^k`` with ``a_l = mu^(Q P^l)``, where ``Q = chunk``
    is the chunk length of sequences longer than ``S``.
    """

    taps: torch.Tensor
    powers: torch.Tensor
    weights: torch.Tensor
    level_powers: torch.Tensor
    chunk: int = CHUNK

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tables by field name (for registering them as buffers)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "chunk"}


@dataclass
class ChunkOperands:
    """What :func:`chunked_conv` multiplies by, built from :class:`ChunkTables` (any length).

    ``toeplitz [H, S, S]`` (in-chunk, both directions); ``state_in [n_kernels, H, 2M, S]`` and
    ``readout [n_kernels, H, S, 2M]`` (state rows: each mode's real, then imaginary part; a chunk of ``q`` bins
    takes the last (causal) or first ``q`` entries of the ``S`` axis, so that powers run up to ``q - 1``);
    ``blocks [levels + 1, n_kernels, H, M, P, 2P]``: in-block scan matrices ``[Re | Im]`` for chunks of
    ``Q = chunk`` bins; ``carry_powers [levels, 2, H, M, P]``: ``a_level^(1..P)``.
    """

    toeplitz: torch.Tensor
    state_in: torch.Tensor
    readout: torch.Tensor
    blocks: torch.Tensor
    carry_powers: torch.Tensor
    chunk: int

    @property
    def levels(self) -> int:
        return self.blocks.shape[0] - 1


def _complex_powers(log_z: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``z^e`` for ``log_z [...]`` (complex128) and real ``exponents [E]`` -> ``[2, ..., E]`` (real, imag), float64."""
    z = torch.exp(log_z[..., None] * exponents.to(log_z.real.dtype))
    return torch.stack([z.real, z.imag])


@torch.no_grad()
def chunk_tables(
    form: DiagonalForm, levels: int = MAX_LEVELS, chunk: int = CHUNK, block: int = BLOCK, whole: int = WHOLE,
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
) -> ChunkTables:
    """:class:`ChunkTables` of a diagonal form for ``levels`` scan levels above the first, computed in
    float64 and stored in ``dtype`` on ``device`` (default: the form's). ``whole >= chunk``."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
        raise ValueError(f"levels must be an integer >= 0, got {levels!r}")
    for name, value in (("chunk", chunk), ("block", block), ("whole", whole)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    if whole < chunk:
        raise ValueError(f"whole must be at least chunk ({chunk}), got {whole}")
    w, log_mu = form.w.to(torch.complex128), form.log_mu.to(torch.complex128)
    k = torch.arange(block + 1, dtype=torch.float64, device=log_mu.device)
    level_powers = [_complex_powers(log_mu * (chunk * block**level), k) for level in range(levels + 1)]
    tables = ChunkTables(
        taps=form.kernel(whole),
        powers=_complex_powers(log_mu, torch.arange(whole + 1, dtype=torch.float64, device=log_mu.device)),
        weights=torch.stack([w.real, w.imag]),
        level_powers=torch.stack(level_powers),
    )
    return ChunkTables(**{name: t.to(device=device, dtype=dtype) for name, t in tables.tensors().items()},
                       chunk=chunk)


def _lag_matrix(powers: torch.Tensor, size: int) -> torch.Tensor:
    """``D[..., p', p] = z^(p - p')`` for ``p >= p'``, else 0, from ``powers [..., > size]`` of ``z^k``."""
    position = torch.arange(size, device=powers.device)
    lag = position[None, :] - position[:, None]
    return powers[..., lag.clamp_min(0)] * (lag >= 0).to(powers.dtype)


def chunk_operands(tables: ChunkTables) -> ChunkOperands:
    """Build the convolution operands from :class:`ChunkTables` (gathers and products only)."""
    n_kernels, H, S = tables.taps.shape
    P = tables.level_powers.shape[-1] - 1
    (p_re, p_im), (w_re, w_im) = tables.powers, tables.weights  # [H, M, S + 1], [n_kernels, H, M]
    up_re, up_im, down_re, down_im = p_re[..., :S], p_im[..., :S], p_re[..., :S].flip(-1), p_im[..., :S].flip(-1)

    def pairs(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:  # [H, M, S] twice -> [H, 2M, S]: rows (m, re/im)
        return torch.stack([re, im], dim=-2).flatten(-3, -2)

    # State in: mu^(S - 1 - j) (causal), mu^j (anti-causal); readout: w mu^(i + 1), w mu^(S - 1 - i).
    state_in = torch.stack([pairs(down_re, down_im), pairs(up_re, up_im)][:n_kernels])
    readout = []
    for k, (re, im) in enumerate([(p_re[..., 1:], p_im[..., 1:]), (down_re, down_im)][:n_kernels]):
        wr, wi = w_re[k][..., None], w_im[k][..., None]  # Re(w z) = wr re - wi im; -Im(w z) = -(wr im + wi re)
        readout.append(pairs(wr * re - wi * im, -(wr * im + wi * re)).transpose(-1, -2))
    blocks = []
    for a_re, a_im in tables.level_powers:
        lag_re, lag_im = _lag_matrix(a_re, P), _lag_matrix(a_im, P)  # [H, M, P, P]; backward: transposed
        forward, backward = torch.cat([lag_re, lag_im], -1), torch.cat([lag_re.mT, lag_im.mT], -1)  # [H, M, P, 2P]
        blocks.append(torch.stack([forward, backward][:n_kernels]))
    return ChunkOperands(
        toeplitz=toeplitz(tables.taps),
        state_in=state_in,
        readout=torch.stack(readout),
        blocks=torch.stack(blocks),
        carry_powers=tables.level_powers[:-1, ..., 1:],
        chunk=tables.chunk,
    )


def _scan(x: torch.Tensor, ops: ChunkOperands, direction: int, level: int, levels: int) -> torch.Tensor:
    """Inclusive scan ``z[c] = a z[c -+ 1] + x[c]`` along the last axis of complex ``x [H, M, 2, B, n]`` (real and
    imaginary parts on axis 2, ``n >= 0``). ``direction`` 0 runs forward, 1 backward; ``level`` selects the
    decay ``a = mu^(Q P^level)``.

    Blocks hold ``p = min(n, P)`` entries, so a level above what the sequence needs scans one entry per
    trial, and an empty sequence stays empty at every level. The state carried into a block enters the
    block's matmul as one more input column, weighted by a row of powers ``a^(k + 1)`` (forward) or ``a^(p - k)``.
    """
    H, M, _, B, n = x.shape
    P = ops.blocks.shape[-2]
    p, n_blocks = torch.sym_min(n, P), (n + P - 1) // P
    rows = 2 * B * n_blocks  # (real/imaginary, trial, block)
    x = F.pad(x, (0, n_blocks * p - n)).reshape(H, M, rows, p)
    blocks = ops.blocks[level, direction]  # [H, M, P, 2P]: [Re | Im] of a^lag
    blocks = torch.cat([blocks[..., :p, :p], blocks[..., :p, P : P + p]], dim=-1)  # [H, M, p, 2p]
    if level < levels:
        # Block totals (the last entry forward, the first backward, without carries): one column of the
        # block matrix; scanned one level up, then carried into the next (previous) block.
        edge = p - 1 if direction == 0 else 0
        t = (x @ torch.cat([blocks[..., edge : edge + 1], blocks[..., p + edge : p + edge + 1]], -1))
        t = t.reshape(H, M, 2, B, n_blocks, 2)
        totals = torch.stack([t[:, :, 0, ..., 0] - t[:, :, 1, ..., 1], t[:, :, 0, ..., 1] + t[:, :, 1, ..., 0]], 2)
        carry = _scan(totals, ops, direction, level + 1, levels)  # [H, M, 2, B, n_blocks]
        carry = F.pad(carry, (1, 0))[..., :n_blocks] if direction == 0 else F.pad(carry, (0, 1))[..., 1:]
        powers = ops.carry_powers[level][..., :p]  # [2, H, M, p]: a^(1..p)
        powers = powers if direction == 0 else powers.flip(-1)
        x = torch.cat([x, carry.reshape(H, M, rows, 1)], dim=-1)
        blocks = torch.cat([blocks, torch.cat([powers[0], powers[1]], -1)[..., None, :]], dim=-2)
    out = (x @ blocks).reshape(H, M, 2, B, n_blocks, 2 * p)
    z_re = out[:, :, 0, ..., :p] - out[:, :, 1, ..., p:]
    z_im = out[:, :, 0, ..., p:] + out[:, :, 1, ..., :p]
    return torch.stack([z_re, z_im], dim=2).reshape(H, M, 2, B, n_blocks * p)[..., :n]


def chunked_conv(
    u: torch.Tensor, ops: ChunkOperands, D: torch.Tensor | None = None, levels: int | None = None
) -> torch.Tensor:
    """Convolve ``u [B, H, L]`` as :func:`~ldns_fast.ssm.fft_conv` does, by chunks (see the module docstring).

    ``ops``: from :func:`chunk_operands`; ``D [H]``: skip term. ``levels``: scan levels above the first
    (default: what ``L`` needs; an exported graph fixes it, which bounds ``L`` by :func:`capacity`).
    Channels lead inside (``[H, q, B, chunks]``) so that every matmul is batched over ``H`` alone.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3 or u.shape[1] != ops.toeplitz.shape[0]:
        raise ValueError(f"u must be a tensor of shape [B, H={ops.toeplitz.shape[0]}, L], "
                         f"got {getattr(u, 'shape', type(u))}")
    B, H, L = u.shape
    n_kernels, S, P, Q = ops.state_in.shape[0], ops.toeplitz.shape[-1], ops.blocks.shape[-2], ops.chunk
    M = ops.state_in.shape[-2] // 2
    whole = torch.sym_min(1, S // L)  # 1 when the sequence is one chunk of its own length, else 0
    q = Q + whole * (L - Q)  # bins per chunk
    C = (L + q - 1) // q  # chunks
    if levels is None:
        levels = scan_levels(C - 1, P)
    if levels > ops.levels:
        raise ValueError(f"{L} bins need {levels} scan levels; these operands have {ops.levels} "
                         f"(up to {capacity(ops.levels, Q, P)} bins)")
    chunks = F.pad(u, (0, C * q - L)).reshape(B, H, C, q).permute(1, 3, 0, 2)  # [H, q, B, C]
    # Causal: chunks 0..C-2 hand their states to chunks 1..C-1, powers mu^(q-1-j) in, w mu^(i+1) out.
    # Anti-causal: chunks 1..C-1 to chunks 0..C-2, powers mu^j in, w mu^(q-1-i) out.
    sources = [(chunks[..., : C - 1], S - q, S, 0, q, (1, 0)), (chunks[..., 1:], 0, q, S - q, S, (0, 1))]
    operand, inputs = [ops.toeplitz[:, :q, :q]], [chunks]
    for k in range(n_kernels):
        source, in0, in1, out0, out1, shift = sources[k]
        x = (ops.state_in[k][..., in0:in1] @ source.reshape(H, q, B * (C - 1))).reshape(H, M, 2, B, C - 1)
        z = _scan(x, ops, k, 0, levels).reshape(H, 2 * M, B, C - 1)
        inputs.append(F.pad(z, shift))  # [H, 2M, B, C]: zero where no state
        operand.append(ops.readout[k][:, out0:out1])
    y = torch.cat(operand, dim=-1) @ torch.cat(inputs, dim=1).reshape(H, -1, B * C)  # [H, q, B * C]
    y = y.reshape(H, q, B, C).permute(2, 0, 3, 1).reshape(B, H, C * q)[..., :L]
    return y if D is None else y + D[:, None] * u
