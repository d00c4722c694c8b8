"""Shared test set-up: no GPU in CI, so Triton kernels run in the interpreter (chosen before import);
a tiny trained run shared by the tests that need one; helpers that several test modules import.

Test modules import the helpers with ``from conftest import ...``: ``tests/`` has no ``__init__.py``, so
pytest (default ``prepend`` import mode) puts ``tests/`` on ``sys.path`` and imports this file as ``conftest``.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Flags of the train CLI for a tiny Lorenz run (60 trials x 24 bins x 12 neurons, 2 epochs per stage).
TINY_FLAGS = [
    "--set", "data.lorenz.n_trials=60", "--set", "data.lorenz.n_bins=24", "--set", "data.lorenz.n_neurons=12",
    "--set", "autoencoder.hidden=16", "--set", "autoencoder.d_state=8", "--set", "autoencoder.latent=4",
    "--set", "denoiser.hidden=16", "--set", "denoiser.d_state=8",
    "--set", "autoencoder_training.batch_size=16", "--set", "diffusion_training.batch_size=16",
    "--ae-epochs", "2", "--diffusion-epochs", "2", "--no-progress",
]


def backend_param(name: str):
    """``name`` as a ``pytest.param``, skipped with the reason when that kernel backend is unavailable on CPU."""
    from ldns_fast.kernels import backend_status

    ok, why = backend_status(name, "cpu")
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=f"{name} unavailable: {why}"))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error ``|out - ref| / |ref|``, with ``out`` cast to ``ref``'s dtype (the oracle's precision)."""
    return float((out.detach().to(ref.dtype) - ref.detach()).norm() / ref.detach().norm())


@pytest.fixture
def lorenz_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated Lorenz datasets go to one cache folder under this session's temporary directory.

    Modules that train on Lorenz data use it for every test:
    ``pytestmark = pytest.mark.usefixtures("lorenz_cache")``.
    """
    monkeypatch.setenv("LDNS_FAST_CACHE", str(tmp_path_factory.getbasetemp() / "lorenz-cache"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """A trained run folder of the smallest useful size (6 neurons, 16 bins, 1 epoch per stage) and its data.

    Shared by the tests of the CLIs and of ``ldns_fast.load``; copy it before changing anything in it.
    Returns ``(run_dir, data_file)``.
    """
    import numpy as np

    from ldns_fast.data import write_dataset
    from ldns_fast.train import main as train_main

    root = tmp_path_factory.mktemp("tiny-run")
    data = write_dataset(root / "data.h5", np.random.default_rng(0).poisson(0.5, (24, 16, 6)), bin_width=0.01)
    small = {"autoencoder.hidden": 8, "autoencoder.latent": 2, "autoencoder.d_state": 4, "autoencoder.n_blocks": 1,
             "denoiser.hidden": 8, "denoiser.d_state": 4, "denoiser.n_blocks": 1,
             "autoencoder_training.batch_size": 8, "diffusion_training.batch_size": 8}
    flags = [arg for key, value in small.items() for arg in ("--set", f"{key}={value}")]
    run = root / "run"
    assert train_main(["--out", str(run), "--data", str(data), "--device", "cpu", "--ae-epochs", "1",
                       "--diffusion-epochs", "1", "--no-progress", *flags]) == 0
    return run, data
