"""LoRA adapters (paella_jax.lora, through qwix): the adapted model at init is the base, merged
and unmerged adapters agree, training changes only the adapters and resumes exactly, adapter
files refuse another base, and sampling with an adapter replays exactly."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from paella_jax import families, lora
from paella_jax.configs import finetune_lora, tiny, tiny_v3


def _inputs(model, kind):
  x = jnp.asarray(np.random.default_rng(0).integers(0, model.num_labels, (2, 8, 8)))
  r = jnp.array([0.3, 0.7])
  if kind == "paella_v1":
    return (x, jnp.ones((2, model.c_clip)), r), {}
  return (x, r), dict(byt5=jnp.ones((2, 5, model.byt5_embd)), clip=jnp.ones((2, model.clip_embd)))


def _varied_base(model, family):
  """Random base params perturbed so that every layer matters (v3's output starts at 0)."""
  leaves, tree = jax.tree.flatten(family.module.init_params(model, jax.random.key(0), (8, 8)))
  rng = np.random.default_rng(1)
  return jax.tree.unflatten(tree, [jnp.asarray(np.asarray(l) + 0.05 * rng.normal(size=l.shape),
                                               jnp.float32) for l in leaves])


@pytest.mark.parametrize("config", [tiny, tiny_v3], ids=["v1", "v3"])
def test_adapters_start_as_the_base_and_merge_exactly(config):
  c = config.get_config()
  family = families.of_config(c)
  model = family.build_model(c.model)
  base = _varied_base(model, family)
  spec = lora.LoraSpec(rank=4, alpha=8.0)
  adapted = lora.lora_model(model, spec)
  args, kw = _inputs(model, family.kind)
  with_factors = lambda factors: unflatten_dict({**flatten_dict(base), **{
      tuple(k.split("/")): jnp.asarray(v) for k, v in factors.items()}})
  run = jax.jit(lambda m, p: m.apply({"params": p}, *args, **kw), static_argnums=0)
  with jax.default_matmul_precision("float32"):
    expected = run(model, base)
    fresh = lora.random_adapters(model, spec)          # B = 0, as training starts
    assert len(fresh) >= 2 * 4 and all(k.rsplit("/", 1)[1] in lora.FACTORS for k in fresh)
    # B = 0 adds an exact zero; only XLA's fusion of the other path may round differently
    np.testing.assert_allclose(run(adapted, with_factors(fresh)), expected, rtol=0, atol=1e-5)
    trained = lora.random_adapters(model, spec, b_scale=0.05)
    unmerged = run(adapted, with_factors(trained))
    merged = run(model, lora.merge(base, trained, spec.alpha, spec.rank))
  assert float(jnp.abs(unmerged - expected).max()) > 1e-2       # the adapters do something
  np.testing.assert_allclose(merged, unmerged, atol=1e-5)


def test_lora_dropout_acts_on_the_adapters_input_while_training_only():
  """Dropout masks the adapters' input (seeded by the step's "dropout" rng): zero adapters give
  the base whatever the mask; sampling merges the adapters, so it never drops anything."""
  c = tiny.get_config()
  model = families.of_config(c).build_model(c.model)
  base = _varied_base(model, families.of_config(c))
  spec = lora.LoraSpec(rank=4, alpha=8.0, dropout=0.5)
  adapted = lora.lora_model(model, spec)
  args, _ = _inputs(model, "paella_v1")
  with_factors = lambda factors: unflatten_dict({**flatten_dict(base), **{
      tuple(k.split("/")): jnp.asarray(v) for k, v in factors.items()}})
  run = jax.jit(lambda p, key: adapted.apply({"params": p}, *args, rngs={"dropout": key}))
  trained = with_factors(lora.random_adapters(model, spec, b_scale=0.05))
  np.testing.assert_array_equal(run(trained, jax.random.key(1)), run(trained, jax.random.key(1)))
  assert float(jnp.abs(run(trained, jax.random.key(1)) - run(trained, jax.random.key(2))).max()
               ) > 1e-3
  zero = with_factors(lora.random_adapters(model, spec))
  np.testing.assert_allclose(run(zero, jax.random.key(1)), model.apply({"params": base}, *args),
                             atol=1e-5)


def _finetune_config(base_dir, steps):
  c = finetune_lora.get_config("tiny")
  c.train.update(init_from=str(base_dir), total_steps=steps, checkpoint_every=2, log_every=1,
                 warmup_steps=1, learning_rate=1e-2, batch_size=8)
  c.train.lora.update(rank=2)
  return c


def test_lora_training_changes_only_the_adapters_and_resumes_exactly(tiny_checkpoints,
                                                                      tmp_path):
  from paella_jax.checkpoint import checkpoint_id
  from paella_jax.training.loop import train
  base_dir = tiny_checkpoints / "model"
  straight = train(_finetune_config(base_dir, 4), str(tmp_path / "a"), progress=False)
  train(_finetune_config(base_dir, 2), str(tmp_path / "b"), progress=False)     # stopped at 2
  resumed = train(_finetune_config(base_dir, 4), str(tmp_path / "b"), progress=False)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  # the state is the adapters alone: optimizer moments and checkpoints cover nothing else
  assert all(lora.is_factor(path) for path in flatten_dict(straight.params))
  adapter = lora.load_adapter(str(tmp_path / "a" / "adapter.safetensors"))
  assert adapter.base_id == checkpoint_id(str(base_dir)) and adapter.rank == 2
  assert not os.path.exists(tmp_path / "a" / "model")
  # merged, the adapters change exactly the targeted kernels, and those they do
  _, base = families.get("paella_v1").load_checkpoint(str(base_dir))
  merged = flatten_dict(lora.merge(base, adapter.factors, adapter.alpha, adapter.rank))
  changed = {"/".join(path) for path, value in flatten_dict(base).items()
             if not np.array_equal(value, merged[path])}
  targeted = {key.rsplit("/", 1)[0] + "/kernel" for key in adapter.factors}
  assert changed == targeted and any("mlp_in" in k for k in changed)
  losses = [json.loads(line)["loss"] for line in open(tmp_path / "a" / "metrics.jsonl")]
  assert len(losses) == 4 and all(np.isfinite(losses))


@pytest.mark.slow
def test_the_demo_lora_example_trains_on_scenes_encoded_on_the_fly(tiny_checkpoints, tmp_path):
  """configs/demo_lora.py (the worked example) on the tiny checkpoints, the demo's
  architecture: the "scenes" source (the demo's images with the new shape, encoded by the VQGAN
  and CLIP as they are drawn, as a folder of your own images would be), with adapter dropout:
  the adapters learn and are written."""
  from paella_jax.configs import demo_lora
  from paella_jax.training.loop import train
  c = demo_lora.get_config()
  assert "rectangle" in c.data.shapes and c.data.source == "scenes"
  c.data.update(num_images=24, vqgan=str(tiny_checkpoints / "vqgan"),
                clip=str(tiny_checkpoints / "clip"))
  c.train.update(init_from=str(tiny_checkpoints / "model"), total_steps=6, batch_size=8,
                 log_every=1, checkpoint_every=6)
  c.train.lora.dropout = 0.25
  state = train(c, str(tmp_path), progress=False)
  b = [v for k, v in flatten_dict(state.params).items() if k[-1] == "kernel_lora_b"]
  assert b and all(float(jnp.abs(v).max()) > 0 for v in b)
  losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl")]
  assert len(losses) == 6 and all(np.isfinite(losses))
  assert lora.load_adapter(str(tmp_path / "adapter.safetensors")).rank == 16


def test_lora_needs_its_base_and_adapters_refuse_another(tiny_checkpoints, tmp_path):
  from paella_jax.checkpoint import checkpoint_id
  from paella_jax.pipeline import Pipeline
  from paella_jax.training.loop import train
  config = _finetune_config("", 1)
  with pytest.raises(ValueError, match="give it with --config.train.init_from"):
    train(config, str(tmp_path / "none"), progress=False)
  base_dir = str(tiny_checkpoints / "model")
  model, _ = families.get("paella_v1").load_checkpoint(base_dir)
  spec = lora.LoraSpec(rank=2).for_model(model)
  factors = lora.random_adapters(model, spec, b_scale=0.05)
  path = lora.save_adapters(str(tmp_path / "other_base.safetensors"), factors, kind="paella_v1",
                            spec=spec, base_id="0" * 16)
  with pytest.raises(ValueError, match="was trained on other base weights"):
    Pipeline.from_checkpoint(base_dir, lora=[(path, 1.0)])
  wrong = {k: np.zeros((3, 3), np.float32) for k in factors}
  path = lora.save_adapters(str(tmp_path / "wrong_shape.safetensors"), wrong, kind="paella_v1",
                            spec=spec, base_id=checkpoint_id(base_dir))
  with pytest.raises(ValueError, match="do not fit its kernel"):
    Pipeline.from_checkpoint(base_dir, lora=[(path, 1.0)])
  (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
  with pytest.raises(ValueError, match="is not a LoRA adapter file"):
    Pipeline.from_checkpoint(base_dir, lora=[(str(tmp_path / "junk.safetensors"), 1.0)])


def _base_whose_blocks_matter(tiny_checkpoints, out) -> str:
  """The tiny model with its layer scales (1e-6 at init, which mute every block) raised, so that
  adapting the blocks changes the samples; its encoders are the tiny ones."""
  from paella_jax.checkpoint import read_model_description, save_model
  model, params = families.get("paella_v1").load_checkpoint(str(tiny_checkpoints / "model"))
  flat = {k: np.full_like(v, 0.5) if k[-1] == "layer_scale" else v
          for k, v in flatten_dict(params).items()}
  meta = dict(read_model_description(str(tiny_checkpoints / "model"))["meta"],
              clip_checkpoint=str(tiny_checkpoints / "clip"),
              vqgan_checkpoint=str(tiny_checkpoints / "vqgan"))
  return save_model(out, unflatten_dict(flat), "paella_v1", model.architecture(), meta=meta)


def _style_adapter(base_dir: str, tmp_path) -> str:
  """A rank-2 adapter of the base with random, nonzero factors: DIR/style.safetensors."""
  from paella_jax.checkpoint import checkpoint_id
  model, _ = families.get("paella_v1").load_checkpoint(base_dir)
  spec = lora.LoraSpec(rank=2, alpha=4.0).for_model(model)
  return lora.save_adapters(str(tmp_path / "style.safetensors"),
                            lora.random_adapters(model, spec, seed=3, b_scale=0.3),
                            kind="paella_v1", spec=spec, base_id=checkpoint_id(base_dir))


def test_sampling_with_an_adapter_replays_exactly_and_merge_lora_matches(tiny_checkpoints,
                                                                         tmp_path):
  from PIL import Image
  from paella_jax.commands.convert import main as convert_main
  from paella_jax.commands.sample import main as sample_main
  base_dir = _base_whose_blocks_matter(tiny_checkpoints, str(tmp_path / "base_model"))
  path = _style_adapter(base_dir, tmp_path)
  common = ["--prompt", "a red circle", "--seed", "5", "--batch-size", "2"]
  sample_main(["generate", "--checkpoint", base_dir, *common, "--out", str(tmp_path / "base")])
  sample_main(["generate", "--checkpoint", base_dir, "--lora", f"{path}:0.5", *common,
               "--out", str(tmp_path / "adapted")])
  codes = lambda run: np.load(tmp_path / run / "codes.npy")
  assert not np.array_equal(codes("base"), codes("adapted"))
  sidecar = json.loads((tmp_path / "adapted" / "0001.json").read_text())
  assert sidecar["lora"][0]["scale"] == 0.5 and len(sidecar["lora"][0]["sha256"]) == 64
  sample_main(["replay", str(tmp_path / "adapted" / "0001.json"), "--out", str(tmp_path / "r")])
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r" / "0001.png")),
                                np.asarray(Image.open(tmp_path / "adapted" / "0001.png")))
  convert_main(["merge-lora", base_dir, f"{path}:0.5", str(tmp_path / "merged")])
  sample_main(["generate", "--checkpoint", str(tmp_path / "merged"), *common,
               "--out", str(tmp_path / "from_merged")])
  np.testing.assert_array_equal(codes("from_merged"), codes("adapted"))
  with open(path, "ab") as f:  # the adapter changed since: a replay cannot be exact
    f.write(b" ")
  with pytest.raises(ValueError):
    sample_main(["replay", str(tmp_path / "adapted" / "0001.json"), "--out",
                 str(tmp_path / "r2")])


def test_a_server_with_an_adapter_and_int8_weights_serves_what_paella_sample_gives(
    tiny_checkpoints, tmp_path):
  """paella-serve --lora --quantize int8: the served images are paella-sample's with the same
  flags, and the served sidecar (adapter, quantization) replays to the same pixels."""
  from PIL import Image
  from paella_jax.commands.sample import main as sample_main
  from tests.test_serve import Server, pixels
  base_dir = _base_whose_blocks_matter(tiny_checkpoints, str(tmp_path / "base_model"))
  path = _style_adapter(base_dir, tmp_path)
  flags = ["--lora", f"{path}:0.5", "--quantize", "int8"]
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  server = Server(base_dir, inputs, *flags)
  try:
    status, answer = server.post("/v1/generate", {"prompt": "a red circle", "seed": 5,
                                                  "num_images": 2})
  finally:
    server.stop()
  assert status == 200, answer
  sample_main(["generate", "--checkpoint", base_dir, *flags, "--prompt", "a red circle",
               "--seed", "5", "--batch-size", "2", "--out", str(tmp_path / "cli")])
  for i, served in enumerate(answer["images"]):
    np.testing.assert_array_equal(pixels(served),
                                  np.asarray(Image.open(tmp_path / "cli" / f"{i:04d}.png")))
  sidecar = answer["sidecars"][1]
  assert sidecar["quantize"] == "int8" and sidecar["lora"][0]["scale"] == 0.5
  (tmp_path / "served.json").write_text(json.dumps(sidecar))
  sample_main(["replay", str(tmp_path / "served.json"), "--out", str(tmp_path / "replay")])
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "replay" / "0001.png")),
                                pixels(answer["images"][1]))
