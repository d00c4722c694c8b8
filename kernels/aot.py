"""Ahead-of-time compilation of every Triton launch for CUDA targets, on a machine without a GPU.

The launchers of :mod:`.triton_backend` run on meta tensors of the LDNS shapes with a launcher that
collects their :class:`~.triton_backend.Launch` es instead of running them, so the kernels are compiled
with exactly the grid, block constexprs, warps, argument types and integer specialisations that a CUDA
run would use (Triton's own ``native_specialize_impl``). Each distinct compile is done once per
target capability in a fresh Triton cache, and its budget read from the artefacts: ptxas's
registers and spill bytes, the kernel's shared memory, PTX lines and compile time (CPU seconds of the
compiler and ptxas, which is what a compile costs on an idle machine; wall seconds are reported too),
plus an occupancy estimate for H200-class GPUs (sm_90: 65,536 registers, 228 KB shared memory and 64
warps per SM).

``python -m ldns_fast.kernels.aot [--capabilities 80 90] [--json PATH]`` prints a markdown table.
Run it where Triton is not in interpreter mode (``TRITON_INTERPRET`` unset): it imports Triton itself.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

from . import triton_backend as tb

# LDNS shapes: channels H, state N = 64 (Np = 32 pairs), trial lengths; bidirectional DPLR S4 layers
# (Vandermonde rows 2H; Cauchy rows 3 x 2 x H for the Woodbury sums of both directions).
CHANNELS = (64, 128, 256, 512)
LENGTHS = (140, 16384)
NP = 32
BATCH = 2
CAPABILITIES = (80, 90)
BUDGET = {"registers": 255, "spill_bytes": 0, "compile_seconds": 60.0}
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # opt-in shared memory per block (A100, H100/H200)
H200 = {"registers": 65536, "shared": 228 * 1024, "warps": 64, "blocks": 32, "block_reserved": 1024}


def ldns_launches() -> list[tuple[str, tb.Launch]]:
    """``(shape label, launch)`` for every launch the Triton backend makes at the LDNS shapes."""
    found: list[tuple[str, tb.Launch]] = []
    meta = {"device": "meta"}
    for H in CHANNELS:
        for L in LENGTHS:
            label = f"H={H} L={L}"
            record = lambda launch, label=label: found.append((label, launch))  # noqa: E731
            v = torch.empty(2 * H, NP, dtype=torch.complex64, **meta)
            tb.vandermonde_triton(v, v, L, launch=record)
            tb.vandermonde_triton_backward(torch.empty(2 * H, L, **meta), v, v, L, launch=record)
            v = torch.empty(6 * H, NP, dtype=torch.complex64, **meta)
            z = torch.empty((L + 1) // 2, dtype=torch.complex64, **meta)  # the DPLR kernel's nodes
            tb.cauchy_triton(v, z, v, launch=record)
            grad = torch.empty(6 * H, z.shape[0], dtype=torch.complex64, **meta)
            tb.cauchy_triton_backward(grad, v, z, v, launch=record)
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.empty(BATCH, H, L, dtype=dtype, **meta)
                gate = torch.empty(BATCH, H, 1, dtype=dtype, **meta)
                stats = torch.empty(BATCH, L, **meta)
                for mask in (None, torch.empty(BATCH, L, **meta)):
                    tb.modulated_norm_triton(x, gate, gate, mask, 1e-5, launch=record)
                    tb.modulated_norm_triton_backward(x, x, gate, mask, stats, stats, launch=record)
                tb.gelu_gate_residual_triton(x, x, gate, launch=record)
                tb.gelu_gate_residual_triton_backward(x, x, gate, launch=record)
    return found


def uncovered_kernels(launches: list[tb.Launch]) -> list[str]:
    """Kernels of :mod:`.triton_kernels` that no launch uses (device helpers count when a launched kernel
    calls them)."""
    from triton.runtime.jit import JITFunction

    kernels = tb.load_kernels()
    launched = {launch.kernel for launch in launches}
    sources = "\n".join(getattr(kernels, name).src for name in launched)
    missing = []
    for name, value in vars(kernels).items():
        if not isinstance(value, JITFunction) or name in launched:
            continue
        if name not in kernels.HELPERS or f"{name}(" not in sources:
            missing.append(name)
    return missing


@dataclass
class CompileSpec:
    """One distinct compile: what ``triton.compile`` receives for a launch."""

    kernel: str
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    specialised: str  # Triton's own integer specialisations: "L%16" (multiple of 16), "CHUNKS=1"

    def key(self) -> str:
        return repr((self.kernel, sorted(self.signature.items()), sorted(map(repr, self.constexprs.items())),
                     sorted(self.attrs.items()), sorted(self.options.items())))

    def dtypes(self) -> str:
        """The element types of the pointer arguments, e.g. ``"bf16+fp32"``."""
        return "+".join(sorted({t[1:] for t in self.signature.values() if t.startswith("*")}))


def compile_spec(launch: tb.Launch) -> CompileSpec:
    """The signature, constexprs and alignment attributes the Triton JIT derives from ``launch``."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    fn = getattr(tb.load_kernels(), launch.kernel)
    constexprs = {**launch.config.blocks, **launch.constexprs}
    signature, attrs, marks, given = {}, {}, [], dict(zip(fn.arg_names, launch.args))
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name], spec = "constexpr", ""
        else:
            signature[name], spec = native_specialize_impl(BaseBackend, given[name], False, True, True)
            if signature[name] == "constexpr":  # integer arguments equal to 1
                constexprs[name], spec = spec, ""
                marks.append(f"{name}=1")
            elif spec == "D" and signature[name][0] != "*":
                marks.append(f"{name}%16")
        if isinstance(spec, str):
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    return CompileSpec(launch.kernel, signature, constexprs, attrs, launch.options, " ".join(marks) or "-")


@dataclass
class CompileResult:
    """Budget figures of one compile for one target."""

    kernel: str
    capability: int
    dtypes: str
    constexprs: str
    specialised: str
    warps: int
    grid_example: str
    shapes: str
    ptx_lines: int
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    seconds: float  # wall clock, inflated when other work shares the CPUs
    cpu_seconds: float  # what the budget checks
    occupancy: float

    def violations(self) -> list[str]:
        """Budget violations (empty when within budget)."""
        found = []
        if self.registers > BUDGET["registers"]:
            found.append(f"{self.registers} registers > {BUDGET['registers']}")
        if self.spill_stores + self.spill_loads > BUDGET["spill_bytes"]:
            found.append(f"spills: {self.spill_stores} B stores, {self.spill_loads} B loads")
        if self.shared_bytes > SHARED_LIMIT[self.capability]:
            found.append(f"{self.shared_bytes} B shared memory > {SHARED_LIMIT[self.capability]}")
        if self.cpu_seconds > BUDGET["compile_seconds"]:
            found.append(f"compile {self.cpu_seconds:.1f} CPU s > {BUDGET['compile_seconds']:.0f} s")
        return found


def occupancy(registers: int, shared: int, warps: int) -> float:
    """Resident warps / 64 on an H200 SM, limited by registers (allocated per warp in units of 256),
    shared memory (plus 1 KB reserved per block) and the block limit."""
    warp_registers = math.ceil(max(registers, 1) * 32 / 256) * 256
    blocks = min(H200["registers"] // (warp_registers * warps), H200["shared"] // (shared + H200["block_reserved"]),
                 H200["warps"] // warps, H200["blocks"])
    return blocks * warps / H200["warps"]


@contextlib.contextmanager
def _fresh_cache() -> Iterator[None]:
    """Compile into an empty Triton cache (so ptxas runs and reports) that is deleted afterwards."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as folder, knobs.cache.scope(), knobs.nvidia.scope():
        knobs.cache.dir = folder
        knobs.nvidia.dump_ptxas_log = True
        yield


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas): a compile's cost on an idle machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def compile_for(spec: CompileSpec, capability: int) -> tuple[object, float, float, str]:
    """``(compiled kernel, wall seconds, CPU seconds, ptxas log)`` of ``spec`` for ``cuda`` at ``capability``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(tb.load_kernels(), spec.kernel)
    log = io.StringIO()
    with _fresh_cache(), contextlib.redirect_stdout(log):
        start, cpu = time.perf_counter(), _cpu_seconds()
        compiled = triton.compile(ASTSource(fn, spec.signature, spec.constexprs, spec.attrs),
                                  target=GPUTarget("cuda", capability, 32), options=spec.options)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return compiled, seconds, cpu, log.getvalue()


def _ptxas_figure(pattern: str, log: str) -> int:
    found = re.search(pattern, log)
    if found is None:
        raise RuntimeError(f"no {pattern!r} in the ptxas log:\n{log}")
    return int(found.group(1))


def compile_all(capabilities: tuple[int, ...] = CAPABILITIES) -> dict:
    """Compile every distinct LDNS launch for each capability; returns the report (see :func:`main`)."""
    from triton import knobs

    if knobs.runtime.interpret:
        raise RuntimeError("Triton is in interpreter mode here (TRITON_INTERPRET is set): it cannot compile")
    launches = ldns_launches()
    distinct: dict[str, tuple[CompileSpec, tb.Launch, list[str]]] = {}
    for label, launch in launches:
        spec = compile_spec(launch)
        distinct.setdefault(spec.key(), (spec, launch, []))[2].append(label)
    results = []
    for spec, launch, labels in distinct.values():
        chosen = {**launch.config.blocks, **launch.constexprs}
        for capability in capabilities:
            compiled, seconds, cpu, log = compile_for(spec, capability)
            registers = _ptxas_figure(r"Used (\d+) registers", log)
            shared = compiled.metadata.shared
            results.append(CompileResult(
                kernel=spec.kernel, capability=capability, dtypes=spec.dtypes(),
                constexprs=" ".join(f"{k}={getattr(v, 'name', v)}" for k, v in sorted(chosen.items())),
                specialised=spec.specialised, warps=spec.options["num_warps"], grid_example=str(launch.config.grid),
                shapes=", ".join(sorted(set(labels))), ptx_lines=compiled.asm["ptx"].count("\n"),
                registers=registers, spill_stores=_ptxas_figure(r"(\d+) bytes spill stores", log),
                spill_loads=_ptxas_figure(r"(\d+) bytes spill loads", log), shared_bytes=shared,
                seconds=round(seconds, 2), cpu_seconds=round(cpu, 2),
                occupancy=occupancy(registers, shared, spec.options["num_warps"]),
            ))
    return {
        "kernels": sorted({launch.kernel for _, launch in launches}),
        "uncovered": uncovered_kernels([launch for _, launch in launches]),
        "results": [asdict(r) | {"violations": r.violations()} for r in results],
    }


def markdown(report: dict) -> str:
    """The report as a markdown table (one row per compile and target)."""
    lines = ["| kernel | sm | dtypes | constexprs | int args | warps | PTX lines | registers | spills (B) | "
             "shared (B) | compile (CPU s) | H200 occupancy |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['kernel']} | {r['capability']} | {r['dtypes']} | {r['constexprs']} | {r['specialised']} | "
                     f"{r['warps']} | {r['ptx_lines']} | {r['registers']} | {r['spill_stores'] + r['spill_loads']} | "
                     f"{r['shared_bytes']} | {r['cpu_seconds']:.1f} | {r['occupancy']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capabilities", type=int, nargs="+", default=list(CAPABILITIES))
    parser.add_argument("--json", help="write the full report (budgets, violations, coverage) here")
    args = parser.parse_args(argv)
    report = compile_all(tuple(args.capabilities))
    if args.json:
        from pathlib import Path

        from ldns_fast.atomic import atomic_write

        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    print(markdown(report))
    bad = [r for r in report["results"] if r["violations"]]
    for r in bad:
        print(f"over budget: {r['kernel']} sm_{r['capability']} {r['constexprs']}: {'; '.join(r['violations'])}",
              file=sys.stderr)
    if report["uncovered"]:
        print(f"kernels no launch covers: {report['uncovered']}", file=sys.stderr)
    return 1 if bad or report["uncovered"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
