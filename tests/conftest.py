"""Shared test set-up: no GPU in CI, so Triton kernels run in the interpreter (chosen before import)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
