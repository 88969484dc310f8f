"""Pure Flax linen modules: the token predictor, the VQGAN and the CLIP encoders."""
