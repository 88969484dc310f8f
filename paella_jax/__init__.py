"""paella-jax: Paella (fast text-conditional discrete denoising on VQGAN tokens) in JAX/Flax."""

__version__ = "0.1.0"
