"""ldns_fast: fast latent diffusion for neural spiking data.

``ldns_fast.load(run_dir)`` returns a trained :class:`~ldns_fast.pipeline.LDNS` with ``encode``,
``decode`` and ``sample``; ``python -m ldns_fast.train`` and ``python -m ldns_fast.sample`` are the CLIs.
"""
__version__ = "0.1.0"


def load(run_dir, device="cpu"):
    """Load a trained run folder (see :meth:`ldns_fast.pipeline.LDNS.load`)."""
    from ldns_fast.pipeline import LDNS

    return LDNS.load(run_dir, device)
