"""What `--quantize` saves and costs (docs/sampling.md#precision).

    python benchmarks/bench_quantize.py memory                        # the paper v3 pipeline
    python benchmarks/bench_quantize.py quality --checkpoint runs/demo/paella/model

`memory`: the weights of Paella v3's whole pipeline (ByT5-XL encoder, CLIP ViT-H/14 text and
vision towers, the 1.0B predictor, the f4 VQGAN) in float32, bfloat16 and int8, from the
parameter shapes of each model as `paella_jax.quantize` holds them (no weights needed: the
quantized trees are traced with `jax.eval_shape`). The VQGAN keeps float32 in every mode.

`quality`: a checkpoint in float32, bfloat16 and int8 (predictor and text encoder alike): the
predictor's logits on one batch of noised token maps (relative RMS error against float32), and
the sampler's codes from the same prompts and seeds (the fraction equal to bfloat16's, and the
total variation distance between the codebook histograms of bfloat16 and each mode). Prompts:
`--prompt` (repeatable), by default the demo's 72 scene prompts.
"""

from __future__ import annotations

import argparse
import importlib

import jax
import jax.numpy as jnp
import numpy as np

MODES = (None, "bfloat16", "int8")


def _gib(size: int) -> str:
  return f"{size / 2 ** 30:.2f} GiB"


def _components():
  """(name, model, example inputs, methods) of the paper v3 pipeline."""
  from paella_jax.families import PAELLA_V3
  from paella_jax.models import clip, t5
  from paella_jax.models.paella_v3 import example_inputs
  from paella_jax.models.vqgan import vqgan_from_config
  config = lambda name: importlib.import_module(f"paella_jax.configs.{name}").get_config()
  v3 = config("paella_v3")
  predictor = PAELLA_V3.build_model(v3.model)
  byt5 = t5.T5Encoder(t5.T5Config.from_dict(dict(config("byt5_xl").model)))
  clip_config = clip.ClipConfig.from_dict(config("clip_vit_h14").model.to_dict())
  vq = vqgan_from_config(config("vqgan_paella_f4").model)
  side = 256
  return [("ByT5-XL encoder", byt5, t5.example_inputs(), ("__call__",)),
          ("CLIP ViT-H/14 (text + vision)", clip.CLIP(clip_config),
           clip.example_inputs(clip_config), ("encode_text", "encode_image")),
          ("Paella v3 predictor", predictor, example_inputs(predictor, tuple(v3.latent_shape)),
           ("__call__",)),
          ("VQGAN f4 (float32 always)", vq, (jnp.zeros((1, side, side, 3)),), None)]


def memory() -> None:
  from flax import linen as nn
  from paella_jax.quantize import quantize, weight_bytes
  print("| model | parameters | float32 | bfloat16 | int8 |\n|---|---|---|---|---|", flush=True)
  totals = dict.fromkeys(MODES, 0)
  for name, model, example, methods in _components():
    init = (lambda: model.init(jax.random.key(0), *example, method="reconstruct")["params"]
            ) if methods is None else (lambda: model.init(jax.random.key(0), *example)["params"])
    shapes = nn.meta.unbox(jax.eval_shape(init))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    sizes = {}
    for mode in MODES:
      held = shapes if methods is None or mode is None else jax.eval_shape(
          lambda p: quantize(model, p, mode, example, methods)[1], shapes)
      sizes[mode] = weight_bytes(held)
      totals[mode] += sizes[mode]
    print(f"| {name} | {count / 1e6:.0f}M | " + " | ".join(_gib(sizes[m]) for m in MODES) + " |",
          flush=True)
  print("| the whole pipeline | | " + " | ".join(_gib(totals[m]) for m in MODES) + " |")


def quality(checkpoint: str, prompts: list[str], seed: int) -> None:
  from paella_jax.pipeline import Pipeline
  pipes = {mode: Pipeline.from_checkpoint(checkpoint, quantize=mode) for mode in MODES}
  reference = pipes[None]
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, reference.model.num_labels, (len(prompts), *reference.latent_shape))
  levels = rng.uniform(0, 1, (len(prompts),)).astype(np.float32)
  logits, codes = {}, {}
  for mode, pipe in pipes.items():
    if pipe.kind == "paella_v1":  # (tokens, CLIP text embedding, noise level)
      forward = lambda p, x, c, r, m=pipe.model: m.apply({"params": p}, x, c, r)
    else:  # (tokens, noise level, ByT5 states, mask and CLIP text embedding)
      forward = lambda p, x, c, r, m=pipe.model: m.apply({"params": p}, x, r, **c)
    logits[mode] = np.asarray(jax.jit(forward)(pipe.params, tokens, pipe.encode_text(prompts),
                                               levels), np.float32)
    codes[mode] = pipe.generate(prompts, seed=seed).codes
    print(f"{mode or 'float32'}: sampled {codes[mode].shape[0]} images", flush=True)
  size = reference.model.num_labels
  histogram = lambda c: np.bincount(c.ravel(), minlength=size) / c.size
  print("| weights | predictor logits vs float32 (relative RMS) | codes equal to bfloat16's | "
        "codebook histogram vs bfloat16's (total variation) |\n|---|---|---|---|")
  for mode in MODES:
    error = np.sqrt(np.mean((logits[mode] - logits[None]) ** 2) / np.mean(logits[None] ** 2))
    same = np.mean(codes[mode] == codes["bfloat16"])
    tv = 0.5 * np.abs(histogram(codes[mode]) - histogram(codes["bfloat16"])).sum()
    print(f"| {mode or 'float32'} | {error:.2%} | {same:.1%} | {tv:.3f} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("what", choices=("memory", "quality"))
  parser.add_argument("--checkpoint", default="runs/demo/paella/model")
  parser.add_argument("--prompt", action="append", default=[])
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.what == "memory":
    memory()
  else:
    from paella_jax.data.scenes import all_scenes
    quality(args.checkpoint, args.prompt or [s.caption for s in all_scenes()], args.seed)


if __name__ == "__main__":
  main()
