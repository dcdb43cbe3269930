"""Unlearning in diffusion models: EraseDiff, its baselines and the full evaluation protocol, notebook-first.

Modules:

- `erasediff.core`: The DDPM of the paper in a few explicit pieces: the linear noise schedule, the forward process `q_sample`, the epsilon-prediction loss with classifier-free label dropout, a diffusers `UNet2DModel` factory, DDPM/DDIM samplers with classifier-free guidance, EMA, and loading/saving diffusers-format checkpoints atomically.
- `erasediff.data`: A registry of datasets (the embedded `digits`, torchvision's `mnist`, `cifar10` and `celeba`, and image `folder`s such as UTKFace), and the forget specification that splits a training set into what must be forgotten ($D_f$), what must be kept ($D_r$) and the held-out images of both (for membership inference and Fréchet distances).
- `erasediff.train`: One optimisation loop (AdamW, warm-up, gradient clipping, EMA, tqdm progress, periodic sample grids, atomic checkpoints that resume bit for bit, a NaN guard) with pluggable objectives. It trains the two reference diffusion models — **Unscrubbed** (all of D) and **Retrain** (D_r only, the gold standard of unlearning) — and the evaluation classifier. The unlearning methods of the next chapters reuse the same loop."""

__version__ = "0.1.0"
