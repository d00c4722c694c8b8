"""Diffusion on latents: the noise schedule and reverse-process samplers.

- :class:`NoiseSchedule`, :class:`DiffusionSchedule`: betas / cumulative alphas, ``add_noise``,
  training ``target`` (epsilon or v) and ``predict_x0_eps``.
- :class:`DDPMSampler`, :class:`DDIMSampler`, :class:`DPMSolverPPSampler`, :class:`SDEDPMSolverPPSampler`
  (``make_sampler`` by name):
  ``set_timesteps(n)`` then ``step(model_output, t, sample, generator)``.
- :func:`sample`: the seeded sampling loop around a ``model_fn(x [B, C, L], t [B]) -> [B, C, L]``;
  :func:`guided`: a conditional denoiser as such a ``model_fn``, with classifier-free guidance.
"""
from .samplers import (
    SAMPLERS,
    SPACINGS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPPSampler,
    Sampler,
    SDEDPMSolverPPSampler,
    ddim_update,
    guided,
    make_sampler,
    make_timesteps,
    posterior_variance,
    sample,
)
from .schedule import BETA_KINDS, PREDICTION_TYPES, DiffusionSchedule, NoiseSchedule, make_betas

__all__ = [
    "BETA_KINDS",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPPSampler",
    "DiffusionSchedule",
    "NoiseSchedule",
    "SDEDPMSolverPPSampler",
    "Sampler",
    "ddim_update",
    "guided",
    "make_betas",
    "make_sampler",
    "make_timesteps",
    "posterior_variance",
    "sample",
]
