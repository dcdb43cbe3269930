"""Unlearning in diffusion models: EraseDiff, its baselines and the full evaluation protocol, notebook-first.

Modules:

- `erasediff.core`: The DDPM of the paper in a few explicit pieces: the linear noise schedule, the forward process `q_sample`, the epsilon-prediction loss with classifier-free label dropout, a diffusers `UNet2DModel` factory, DDPM/DDIM samplers with classifier-free guidance, EMA, and loading/saving diffusers-format checkpoints atomically."""

__version__ = "0.1.0"
