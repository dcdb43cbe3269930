"""Unlearning in diffusion models: EraseDiff, its baselines and the full evaluation protocol, notebook-first.

Modules:

- `erasediff.core`: The DDPM of the paper in a few explicit pieces: the linear noise schedule, the forward process `q_sample`, the epsilon-prediction loss with classifier-free label dropout, a diffusers `UNet2DModel` factory, DDPM/DDIM samplers with classifier-free guidance, EMA, and loading/saving diffusers-format checkpoints atomically.
- `erasediff.data`: A registry of datasets (the embedded `digits`, torchvision's `mnist`, `cifar10` and `celeba`, and image `folder`s such as UTKFace), and the forget specification that splits a training set into what must be forgotten ($D_f$), what must be kept ($D_r$) and the held-out images of both (for membership inference and Fréchet distances)."""

__version__ = "0.1.0"
