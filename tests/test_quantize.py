"""bfloat16 and int8 weights for inference (paella_jax.quantize) against the float32 references."""

import json
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paella_jax.convert import paella_v1_from_torch, paella_v3_from_torch
from paella_jax.models import paella, paella_v3
from paella_jax.pipeline import Pipeline
from paella_jax.quantize import quantize, weight_bytes

# int8 weight-only against bfloat16, both against the float32 outputs of the original's
# fixtures: int8's error may be at most INT8_OVER_BF16 times bfloat16's (RMS over every logit),
# and stays under MAX_RELATIVE_RMS of the logits' own RMS. Measured (docs/sampling.md): v1 tiny
# bf16 0.82%, int8 1.14%; v3 tiny bf16 1.26%, int8 2.07%.
INT8_OVER_BF16 = 2.0
MAX_RELATIVE_RMS = 0.04


def _fixture_models(reference_dir):
  io1 = np.load(reference_dir / "paella_v1_tiny_io.npz")
  v1, p1 = paella_v1_from_torch(reference_dir / "paella_v1_tiny.pt")
  io3 = np.load(reference_dir / "paella_v3_tiny_io.npz")
  v3, p3 = paella_v3_from_torch(reference_dir / "paella_v3_tiny.pt", nhead=[-1, 4, 4])
  return {
      "v1": (v1, p1, paella.example_inputs(v1, (8, 8)),
             (io1["x"], io1["c"], io1["r"]), {}, io1["logits"]),
      "v3": (v3, p3, paella_v3.example_inputs(v3, (16, 16)),
             (io3["x"], io3["r"], io3["byt5"]),
             {"clip": io3["clip"], "clip_image": io3["clip_image"]}, io3["logits_all"])}


def relative_rms(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


@pytest.mark.parametrize("family", ["v1", "v3"])
def test_int8_logits_stay_within_the_bound_of_bfloat16_on_the_fixtures(reference_dir, family):
  model, params, example, args, kwargs, expected = _fixture_models(reference_dir)[family]
  expected = np.asarray(expected).transpose(0, 2, 3, 1)  # NCHW -> NHWC
  errors, sizes = {}, {}
  for mode in ("bfloat16", "int8"):
    m, p = quantize(model, params, mode, example)
    logits = jax.jit(m.apply)({"params": p}, *map(jnp.asarray, args),
                              **{k: jnp.asarray(v) for k, v in kwargs.items()})
    assert logits.shape == expected.shape
    errors[mode], sizes[mode] = relative_rms(logits, expected), weight_bytes(p)
  assert 0 < errors["bfloat16"] <= errors["int8"] <= INT8_OVER_BF16 * errors["bfloat16"]
  assert errors["int8"] < MAX_RELATIVE_RMS
  assert sizes["int8"] < sizes["bfloat16"] == weight_bytes(params) // 2


def test_int8_stores_the_products_kernels_as_int8_and_leaves_the_rest(reference_dir):
  model, params, example, *_ = _fixture_models(reference_dir)["v3"]
  _, p = quantize(model, params, "int8", example)
  qkernel = p["down_1_block_2"]["query"]["kernel"].array
  assert qkernel.qvalue.dtype == jnp.int8 and qkernel.qvalue.shape[-2:] == (4, 8)
  scale = np.asarray(qkernel.scale, np.float32)
  float_kernel = np.asarray(params["down_1_block_2"]["query"]["kernel"])
  np.testing.assert_allclose(  # dequantized = the kernel, to half a step of its channel's scale
      np.asarray(qkernel.qvalue, np.float32) * scale, float_kernel, atol=0.51 * scale.max() + 1e-3)
  assert p["down_0_block_0"]["depthwise"]["kernel"].dtype == jnp.bfloat16  # a convolution
  assert p["in_mapper"]["embedding"].dtype == jnp.bfloat16  # an embedding
  assert quantize(model, params, None, example) == (model, params)
  with pytest.raises(ValueError, match="quantize must be one of bfloat16, int8"):
    quantize(model, params, "int4", example)


def _codes(pipe, prompt="a red circle"):
  return pipe.generate(prompt, num_images=4, seed=3).codes


@pytest.mark.parametrize("which", ["v1", "v3"])
def test_pipeline_samples_with_quantized_predictor_and_encoders(tiny_checkpoints, v3_model,
                                                                which):
  directory = str(tiny_checkpoints / "model") if which == "v1" else v3_model
  full = Pipeline.from_checkpoint(directory)
  pipes = {mode: Pipeline.from_checkpoint(directory, quantize=mode)
           for mode in ("bfloat16", "int8")}
  for mode, pipe in pipes.items():
    assert pipe.quantize == mode and weight_bytes(pipe.params) < weight_bytes(full.params)
    codes = _codes(pipe)
    assert codes.shape == _codes(full).shape and codes.dtype == np.int32
    np.testing.assert_array_equal(codes, _codes(pipe))  # deterministic
  # the encoders are quantized too: their embeddings move a little, not much
  text = {mode: np.asarray(p.conditioning.encode(["a red circle"])["clip"] if which == "v3"
                           else p.encode_text("a red circle"), np.float32)
          for mode, p in {"float32": full, **pipes}.items()}
  for mode in ("bfloat16", "int8"):
    assert 0 < relative_rms(text[mode], text["float32"]) < MAX_RELATIVE_RMS
  if which == "v3":
    byt5 = pipes["int8"].byt5_encoder()
    assert byt5.params["block_0"]["attention"]["q"]["kernel"].array.qvalue.dtype == jnp.int8


def test_sample_cli_records_the_quantization_and_replays_it_exactly(tiny_checkpoints, tmp_path,
                                                                   capsys):
  from paella_jax.commands.sample import main
  common = ["--checkpoint", str(tiny_checkpoints / "model"), "--prompt", "a blue square",
            "--batch-size", "2", "--seed", "5", "--steps", "4"]
  main([*common, "--quantize", "int8", "--out", str(tmp_path / "int8")])
  sidecar = json.loads((tmp_path / "int8" / "0000.json").read_text())
  assert sidecar["quantize"] == "int8"
  main(["replay", str(tmp_path / "int8" / "0000.json"), "--out", str(tmp_path / "replay")])
  np.testing.assert_array_equal(np.load(tmp_path / "replay" / "codes.npy"),
                                np.load(tmp_path / "int8" / "codes.npy"))
  main([*common, "--out", str(tmp_path / "float32")])  # the checkpoint's own weights differ
  assert json.loads((tmp_path / "float32" / "0000.json").read_text())["quantize"] is None
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    main([*common, "--quantize", "int4", "--out", str(tmp_path / "bad")])
  assert exit_info.value.code == 2
  assert "--quantize: invalid choice: 'int4'" in capsys.readouterr().err
