"""Shared test set-up: no GPU in CI, so Triton kernels run in the interpreter (chosen before import);
a tiny trained run shared by the tests that need one."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
