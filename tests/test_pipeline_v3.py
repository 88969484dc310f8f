"""Paella v3 through the inference pipeline and paella-sample: a tiny random v3 model with a tiny
random ByT5, CLIP and VQGAN saved as checkpoint directories."""

import json

import numpy as np
import pytest

from paella_jax import request
from paella_jax.cli import run_main
from paella_jax.commands.sample import main as sample_main
from paella_jax.pipeline import Pipeline
from paella_jax.sampling import row_keys, sample

PROMPTS = ["a red circle", "a blue square on a long green field"]


@pytest.fixture(scope="module")
def pipe(v3_model):
  return Pipeline.from_checkpoint(v3_model)


@pytest.fixture(scope="module")
def encoders(v3_model, tiny_checkpoints):
  """The model's ByT5 and CLIP, loaded apart from the pipeline: prompts -> conditioning dict."""
  from paella_jax.encoders.byt5 import ByT5Encoder, load_t5_encoder
  from paella_jax.encoders.clip import ClipEncoder, load_clip
  byt5 = ByT5Encoder(*load_t5_encoder(f"{v3_model}/../byt5"))
  clip = ClipEncoder(*load_clip(tiny_checkpoints / "clip", text_only=True))

  def encode(prompts):
    hidden, mask = byt5.encode(prompts)
    return dict(byt5=hidden, byt5_mask=mask, clip=clip.encode_text(prompts))
  return encode


def direct(pipe, cond, uncond, seed, rows, **settings):
  """`sampling.sample` called directly with the pipeline's generate settings."""
  settings = pipe.settings("generate", **settings)
  return np.asarray(sample(pipe.model, pipe.params, cond, row_keys(seed, rows), settings,
                           latent_shape=(8, 8), uncond=uncond))


def test_generate_is_the_sampler_on_byt5_and_clip_guided_against_the_empty_prompt(pipe, encoders):
  result = pipe.generate(PROMPTS, num_images=2, seed=3)
  cond = {k: np.repeat(v, 2, 0) for k, v in encoders(PROMPTS).items()}
  np.testing.assert_array_equal(result.codes, direct(pipe, cond, encoders([""]), 3, 4))
  assert result.settings.steps == 4 and result.settings.cfg == (8.0, 8.0)
  assert result.settings.temperature == (0.7, 0.3) and result.settings.typical_mass is None
  assert result.labels == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
  assert result.images.shape == (4, 32, 32, 3) and 0 <= result.images.min() <= result.images.max() <= 1
  np.testing.assert_array_equal(pipe.generate(PROMPTS, num_images=2, seed=3).codes, result.codes)
  assert not np.array_equal(pipe.generate(PROMPTS, num_images=2, seed=4).codes, result.codes)
  # guidance matters: without it the codes differ
  assert not np.array_equal(pipe.generate(PROMPTS, num_images=2, seed=3, cfg="off").codes,
                            result.codes)


def test_negative_prompt_replaces_the_empty_prompt_in_guidance(pipe, encoders):
  plain = pipe.generate(PROMPTS[0], num_images=4, seed=5).codes
  negative = pipe.generate(PROMPTS[0], num_images=4, seed=5, negative_prompt="a blue square")
  assert not np.array_equal(negative.codes, plain)
  cond = {k: np.repeat(v, 4, 0) for k, v in encoders([PROMPTS[0]]).items()}
  np.testing.assert_array_equal(negative.codes,
                                direct(pipe, cond, encoders(["a blue square"]), 5, 4))


def test_edit_vary_and_interpolate_sample_a_v3_model_and_multi_is_refused(pipe):
  image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
  kw = dict(num_images=2, seed=1)
  edited = pipe.edit(image, "a watercolour", **kw)
  assert edited.codes.shape == (2, 8, 8) and edited.settings.start_step == 4
  assert pipe.vary(image, **kw).images.shape == (2, 32, 32, 3)
  frames = pipe.interpolate(PROMPTS, frames=3, **kw)
  assert frames.codes.shape == (6, 8, 8) and frames.labels[::2] == ["frame 0", "frame 1", "frame 2"]
  with pytest.raises(ValueError, match="only Paella v1 takes"):
    pipe.multi(PROMPTS)


@pytest.mark.slow
def test_inpaint_and_outpaint_sample_a_v3_model(pipe):
  image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
  kw = dict(num_images=2, seed=1, negative_prompt="a blue square")
  inpainted = pipe.inpaint(image, "a red hat", box=(0, 0, 16, 32), **kw)
  kept = pipe.encode_image(image)[0, 4:]  # the bottom half of the latent keeps the image's codes
  assert inpainted.codes.shape == (2, 8, 8) and (inpainted.codes[:, 4:] == kept).all()
  outpainted = pipe.outpaint(image, (32, 64), "a wide beach", offset=(0, 0), **kw)
  assert outpainted.images.shape == (2, 32, 64, 3)
  assert (outpainted.codes[:, :, :8] == pipe.encode_image(image)[0]).all()


def test_v3_conditioning_of_variations_and_interpolation(pipe, encoders):
  """vary: the empty prompt's conditioning plus the CLIP image embedding of v3's preprocessing,
  guided against the empty prompt alone; interpolate: its end frames are the prompts."""
  from paella_jax.encoders.clip import preprocess_v3
  image = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
  vary = pipe.prepare(request.Vary(image=image, num_images=2))
  encoder = pipe.text_encoder(vision=True)
  emb = encoder.encode_images(np.asarray(preprocess_v3(image[None], 32)))
  np.testing.assert_allclose(vary.cond["clip_image"], np.repeat(emb, 2, 0), atol=1e-6)
  empty = encoders([""])
  for key in ("byt5", "byt5_mask", "clip"):
    np.testing.assert_allclose(vary.cond[key], np.repeat(empty[key], 2, 0), atol=1e-6)
  assert sorted(vary.uncond) == ["byt5", "byt5_mask", "clip"]

  path = pipe.prepare(request.Interpolate(prompts=PROMPTS, frames=3)).cond
  ends = encoders(PROMPTS)
  np.testing.assert_array_equal(path["byt5_mask"][[0, 2]], ends["byt5_mask"])
  np.testing.assert_array_equal(path["byt5_mask"][1], ends["byt5_mask"].any(0))
  np.testing.assert_allclose(path["clip"][[0, 2]], ends["clip"], atol=1e-6)
  real = ends["byt5_mask"][..., None]  # encoded in other chunks here: equal up to rounding
  np.testing.assert_allclose(np.where(real, path["byt5"][[0, 2]], 0),
                             np.where(real, ends["byt5"], 0), atol=1e-5)


def test_the_server_batches_v3_requests_as_sampled_alone(pipe):
  """paella-serve's batcher: two v3 requests (one with a negative prompt) in one padded sampler
  call get the codes each gets from the pipeline alone."""
  from paella_jax.serve.batcher import Batcher, Job
  from paella_jax.serve.metrics import Metrics
  batcher = Batcher(pipe, Metrics(), max_batch=4)
  calls = [dict(prompts=PROMPTS[0], num_images=1, seed=2),
           dict(prompts=PROMPTS[1], num_images=2, seed=7, negative_prompt="a blue square")]
  jobs = [Job(pipe.prepare(request.Generate(**call)), future=None) for call in calls]
  assert jobs[0].group == jobs[1].group
  for (codes, images), call in zip(batcher.sample_jobs(jobs), calls):
    alone = pipe.generate(**call)
    np.testing.assert_array_equal(codes, alone.codes)
    np.testing.assert_allclose(images, alone.images, atol=1e-6)


def test_sample_command_generates_and_replays_a_v3_image(v3_model, tmp_path):
  out = tmp_path / "run"
  sample_main(["--checkpoint", v3_model, "--prompt", PROMPTS[0], "--batch-size", "2",
               "--negative-prompt", "a blue square", "--out", str(out)])
  sidecar = json.load(open(out / "0001.json"))
  assert sidecar["kind"] == "paella_v3" and sidecar["request"]["negative_prompt"] == "a blue square"
  assert sidecar["byt5_checkpoint"].endswith("byt5")
  assert sidecar["sampler"]["temperature"] == [0.7, 0.3]
  sample_main(["replay", str(out / "0001.json"), "--out", str(tmp_path / "again")])
  np.testing.assert_array_equal(np.load(tmp_path / "again" / "codes.npy"),
                                np.load(out / "codes.npy"))
  other = tmp_path / "other"
  sample_main(["--checkpoint", v3_model, "--prompt", PROMPTS[0], "--batch-size", "2",
               "--out", str(other)])
  assert not np.array_equal(np.load(other / "codes.npy"), np.load(out / "codes.npy"))


def test_a_negative_prompt_with_a_v1_model_is_one_line_error(tiny_checkpoints, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    run_main(sample_main, ["--checkpoint", str(tiny_checkpoints / "model"), "--prompt", "a",
                           "--negative-prompt", "b", "--out", str(tmp_path / "x")])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      "error: a negative prompt needs a Paella v3 model: Paella v1 guides with zero "
      "conditioning, not with a prompt"]
  assert not (tmp_path / "x").exists()
