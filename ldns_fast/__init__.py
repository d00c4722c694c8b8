"""ldns_fast: fast latent diffusion for neural spiking data."""
__version__ = "0.1.0"
