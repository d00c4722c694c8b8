"""The kernels as torch custom ops (``torch.ops.ldns_fast.*``).

``torch.library.opcheck`` checks each op's schema, fake (meta) implementation and registered autograd
against the real implementation, on the naive, torch and (interpreted) Triton backends. One
``torch.compile(fullgraph=True)`` of a denoiser block followed by an autoencoder block (DPLR S4, with the
fused ops) must trace through the ops without a graph break and match eager forward and gradients
(with :data:`ldns_fast.kernels.ops.COMPILE_OPTIONS`, which works around an inductor bug).
"""
from __future__ import annotations

import pytest
import torch
from conftest import backend_param
from torch import nn

from ldns_fast.kernels import ops
from ldns_fast.models.autoencoder import S4Block
from ldns_fast.models.denoiser import DenoiserBlock


def complex_input(*shape: int, seed: int, decay: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    re, im = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    return torch.complex(-re.abs() if decay else re, im).requires_grad_()


@pytest.mark.parametrize("backend", ["naive", "torch", backend_param("triton")])
def test_ops_pass_opcheck(backend):
    v, x = complex_input(3, 4, seed=0), complex_input(3, 4, seed=1, decay=True)
    torch.library.opcheck(ops.vandermonde, (v, x, 20, backend, True))
    z = torch.complex(torch.zeros(6), torch.linspace(0, 3, 6))
    rows = complex_input(2, 3, 4, seed=5)  # two rows share each of the 3 pole sets x
    torch.library.opcheck(ops.cauchy, (rows, z, x, backend, True))
    if backend == "naive":  # the SSM kernels' reference formulas only; the fused ops have no naive backend
        return
    g = torch.Generator().manual_seed(2)
    seq, y = (torch.randn(2, 8, 5, generator=g, requires_grad=True) for _ in range(2))
    shift, scale = (torch.randn(2, 8, 1, generator=g, requires_grad=True) for _ in range(2))
    for mask in (None, (torch.arange(5) < torch.tensor([[5], [3]])).float()):
        torch.library.opcheck(ops.modulated_norm, (seq, shift, scale, mask, 1e-5, backend))
    torch.library.opcheck(ops.gelu_gate_residual, (seq, y, shift, backend))


def test_op_checks_inputs_for_nan_inside_the_op():
    """The NaN scan runs on real tensors inside the op (so compiled callers keep it without a graph break)."""
    v, x = complex_input(2, 3, seed=3), complex_input(2, 3, seed=4, decay=True)
    bad = x.detach().clone()
    bad[0, 0] = complex(float("nan"), 0)
    with pytest.raises(ValueError, match=r"^x contains NaN"):
        torch.ops.ldns_fast.vandermonde(v, bad, 8, "torch", True)
    assert torch.ops.ldns_fast.vandermonde(v, bad, 8, "torch", False).isnan().any()


class TwoBlocks(nn.Module):
    """A denoiser block, then an autoencoder block, on ``[B, C, L]`` (both DPLR S4, backend "auto")."""

    def __init__(self, C: int) -> None:
        super().__init__()
        self.denoiser = DenoiserBlock(C, embed_dim=8, d_state=4, mode="dplr", backend="auto")
        self.autoencoder = S4Block(C, d_state=4, mode="dplr", bidirectional=True, backend="auto")

    def forward(self, x: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.autoencoder(self.denoiser(x, emb, mask), mask)


def test_blocks_compile_fullgraph_through_the_ops():
    torch.manual_seed(0)
    model = TwoBlocks(8)
    with torch.no_grad():  # the adaLN modulation starts at zero: make every path carry signal
        model.denoiser.modulation.weight.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)
    x, upstream = torch.randn(2, 8, 16, generator=g), torch.randn(2, 8, 16, generator=g)
    emb = torch.randn(2, 8, generator=g)
    mask = (torch.arange(16) < torch.tensor([[16], [11]])).float()
    params = list(model.parameters())

    graphs = []

    def inductor(gm, example_inputs):  # torch.compile's default backend, recording the graph it gets
        from torch._inductor.compile_fx import compile_fx

        graphs.append(gm)
        return compile_fx(gm, example_inputs, config_patches=ops.COMPILE_OPTIONS)

    compiled = torch.compile(model, backend=inductor, fullgraph=True)
    results = []
    for fn in (model, compiled):  # S4 makes no host sync (no graph break)
        xi = x.clone().requires_grad_()
        out = fn(xi, emb, mask)
        results.append([out, *torch.autograd.grad(out, [xi, *params], upstream)])
    assert len(graphs) == 1
    called = {str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"}
    assert {"ldns_fast.modulated_norm.default", "ldns_fast.gelu_gate_residual.default",
            "ldns_fast.cauchy.default"} <= called
    for i, (eager, fast) in enumerate(zip(*results)):
        err = float((fast - eager).detach().norm() / eager.detach().norm())
        assert err < 1e-5, f"output/grad {i}: rel err {err:.2e}"
