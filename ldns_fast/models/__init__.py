"""LDNS models: the S4 autoencoder and the latent denoiser."""
from .autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss
from .denoiser import Denoiser, DenoiserConfig

__all__ = ["Autoencoder", "AutoencoderConfig", "Denoiser", "DenoiserConfig", "autoencoder_loss"]
