"""Importing the package has no side effects: no environment variable changes and no Triton import.

Triton, and the choice of its interpreter, belong to the first use of a Triton backend. Each check runs
in a fresh interpreter without ``TRITON_INTERPRET`` (this test process has set it and imported Triton).
(torch's compiler front end, ``torch._dynamo``, imports Triton and sets ``TORCHINDUCTOR_CACHE_DIR``
when it is imported, so the package must not import it either.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest
import torch


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter without TRITON_INTERPRET; return the JSON of its last line."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


IMPORT_EVERYTHING = """
import importlib, json, os, pkgutil, sys
before = dict(os.environ)
import ldns_fast, ldns_fast.export, ldns_fast.kernels
imported = []
for package in (ldns_fast, ldns_fast.kernels, ldns_fast.export):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        # __main__ runs a CLI; triton_kernels is the Triton code itself (imported on first use)
        if info.name.endswith(".__main__") or info.name == "ldns_fast.kernels.triton_kernels":
            continue
        importlib.import_module(info.name)
        imported.append(info.name)
changed = sorted(k for k in before.keys() | os.environ.keys() if before.get(k) != os.environ.get(k))
triton = sorted(m for m in sys.modules if m.split(".")[0] == "triton" or m == "torch._dynamo")
print(json.dumps({"imported": imported, "changed": changed, "triton": triton}))
"""


def test_importing_every_module_changes_no_environment_variable_and_imports_no_triton():
    report = run_python(IMPORT_EVERYTHING)
    for module in ("ldns_fast.pipeline", "ldns_fast.models.denoiser", "ldns_fast.kernels.triton_backend",
                   "ldns_fast.kernels.ops", "ldns_fast.kernels.aot", "ldns_fast.export.runtime"):
        assert module in report["imported"]
    assert report["changed"] == []
    assert report["triton"] == []


def test_inference_never_imports_the_training_code():
    report = run_python("""
import json, sys
import ldns_fast.pipeline, ldns_fast.evaluate, ldns_fast.quality, ldns_fast.sample, ldns_fast.export
import ldns_fast.export.onnx_export
print(json.dumps({"training": sorted(m for m in sys.modules if m.startswith("ldns_fast.training"))}))
""")
    assert report["training"] == []


needs_interpreter_choice = pytest.mark.skipif(
    find_spec("triton") is None or torch.cuda.is_available(),
    reason="needs triton on a machine without CUDA (where the first use chooses the interpreter)",
)


@needs_interpreter_choice
def test_first_triton_use_on_cpu_chooses_the_interpreter():
    report = run_python("""
import json, os, sys, torch
from ldns_fast.kernels import backend_status, gelu_gate_residual
before, status = os.environ.get("TRITON_INTERPRET"), backend_status("triton", "cpu")
imported_early = "triton" in sys.modules
x, gate = torch.randn(2, 4, 6, dtype=torch.float64), torch.randn(2, 4, 1, dtype=torch.float64)
out = gelu_gate_residual(x, 2 * x, gate, backend="triton")
ref = gelu_gate_residual(x, 2 * x, gate, backend="torch")
print(json.dumps({"before": before, "status": status, "imported_early": imported_early,
                  "after": os.environ.get("TRITON_INTERPRET"), "err": float((out - ref).abs().max())}))
""")
    assert report["before"] is None and report["status"] == [True, ""] and not report["imported_early"]
    assert report["after"] == "1"
    assert report["err"] < 1e-12


@needs_interpreter_choice
def test_triton_imported_without_the_interpreter_gives_a_clear_error_on_cpu():
    report = run_python("""
import json, torch, triton
from ldns_fast.kernels import BackendUnavailableError, backend_status, modulated_norm
status = backend_status("triton", "cpu")
x, v = torch.randn(1, 4, 6), torch.randn(1, 4, 1)
try:
    modulated_norm(x, v, v, backend="triton")
    raised = ""
except BackendUnavailableError as err:
    raised = str(err)
print(json.dumps({"status": status, "raised": raised, "auto": list(modulated_norm(x, v, v).shape)}))
""")
    ok, why = report["status"]
    assert not ok and "set TRITON_INTERPRET=1 before anything imports triton" in why
    assert report["raised"].startswith("kernel backend 'triton' is unavailable on cpu: CPU tensors need the Triton")
    assert report["auto"] == [1, 4, 6]
