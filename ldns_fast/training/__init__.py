"""Training: the generic stage loop (checkpoints, resume, DDP, EMA) and the two LDNS stages."""
from .ema import EMA
from .loop import DistributedContext, StageTrainer, distributed_context
from .stages import train_autoencoder, train_diffusion

__all__ = ["EMA", "DistributedContext", "StageTrainer", "distributed_context", "train_autoencoder", "train_diffusion"]
