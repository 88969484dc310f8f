"""paella-serve as a real server: a uvicorn subprocess on 127.0.0.1 over the tiny checkpoints."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from paella_jax.commands.sample import main as sample_main
from tests.conftest import ROOT


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """`python -m paella_jax.serve` on a free loopback port, waited for until /health answers."""

  def __init__(self, checkpoint, inputs_dir, *flags):
    self.url = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    self.log = open(os.path.join(inputs_dir, "server.log"), "w+")
    self.process = subprocess.Popen(
        [sys.executable, "-m", "paella_jax.serve", "--checkpoint", str(checkpoint),
         "--port", self.url.rsplit(":", 1)[1], "--inputs-dir", str(inputs_dir), *flags],
        cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while True:
      try:
        if self.get("/health")[0] == 200:
          return
      except OSError:
        pass
      if self.process.poll() is not None or time.monotonic() > deadline:
        self.log.seek(0)
        output = self.log.read()
        self.stop()
        raise RuntimeError(f"the server did not start:\n{output}")
      time.sleep(0.5)

  def get(self, path):
    with urllib.request.urlopen(self.url + path, timeout=30) as response:
      return response.status, json.loads(response.read())

  def post(self, path, body, timeout=120):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
      return e.code, json.loads(e.read())

  def stop(self):
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait()
    self.log.close()


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tmp_path_factory):
  running = Server(tiny_checkpoints / "model", tmp_path_factory.mktemp("inputs"),
                   "--max-batch", "8", "--max-wait-ms", "300", "--bucket-policy", "pad")
  yield running
  running.stop()


def pixels(png_base64: str) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("RGB"))


def png_base64(image: np.ndarray) -> str:
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return base64.b64encode(out.getvalue()).decode()


def concurrently(fn, items):
  with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
    return list(pool.map(fn, items))


def test_concurrent_clients_get_paella_samples_images(server, tiny_checkpoints, tmp_path):
  """Requests with different seeds and traced settings, sampled together, give each the images
  paella-sample gives alone; a served sidecar replays to the same image."""
  image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
  Image.fromarray(image).save(tmp_path / "in.png")
  requests = [
      ("generate", {"prompt": "a red circle", "seed": 1, "num_images": 2}, []),
      ("generate", {"prompt": "a blue square", "seed": 2, "cfg": 2.5, "temperature": [0.7, 0.2],
                    "typical_mass": 0.5}, ["--cfg", "2.5", "--temperature", "0.7", "0.2",
                                           "--typical-mass", "0.5"]),
      ("inpaint", {"prompt": "a green circle", "seed": 3, "image": png_base64(image),
                   "box": [8, 8, 24, 24]}, ["--image", str(tmp_path / "in.png"),
                                            "--box", "8", "8", "24", "24"]),
  ]
  before = server.get("/metrics")[1]
  assert server.get("/health")[1]["startup_compile_s"] == before["startup_compile_s"] > 0
  answers = concurrently(lambda r: server.post(f"/v1/{r[0]}", r[1]), requests)
  assert [status for status, _ in answers] == [200] * 3, answers
  after = server.get("/metrics")[1]
  assert after["sampler_calls"] - before["sampler_calls"] < 3  # some were batched
  # only generation was compiled at start-up: inpainting compiled on its first use
  assert after["compiles"] > before["compiles"] and after["compile_s"] > before["compile_s"]
  for (mode, body, extra), (_, answer) in zip(requests, answers):
    out = tmp_path / f"{mode}{body['seed']}"
    sample_main([mode, "--checkpoint", str(tiny_checkpoints / "model"), "--prompt", body["prompt"],
                 "--seed", str(body["seed"]), "--batch-size", str(body.get("num_images", 1)),
                 "--out", str(out), *extra])
    assert len(answer["images"]) == body.get("num_images", 1)
    for i, served in enumerate(answer["images"]):
      np.testing.assert_array_equal(pixels(served), np.asarray(Image.open(out / f"{i:04d}.png")))
      sidecar = json.loads((out / f"{i:04d}.json").read_text())
      for field in ("sampler", "sampler_version", "checkpoint_id", "command"):
        assert answer["sidecars"][i][field] == sidecar[field]
  (tmp_path / "served.json").write_text(json.dumps(answers[1][1]["sidecars"][0]))
  sample_main(["replay", str(tmp_path / "served.json"), "--out", str(tmp_path / "replay")])
  np.testing.assert_array_equal(pixels(answers[1][1]["images"][0]),
                                np.asarray(Image.open(tmp_path / "replay" / "0000.png")))


def test_split_calls_give_the_rows_of_one_padded_call(tiny_checkpoints):
  """A group of 5 rows is one call padded to 8 ("pad") or calls of 4 and 1 ("split", the
  CPU's default): the same codes and images either way."""
  from paella_jax import request
  from paella_jax.pipeline import Pipeline
  from paella_jax.serve.batcher import Batcher, Job
  from paella_jax.serve.metrics import Metrics
  pipe = Pipeline.from_checkpoint(str(tiny_checkpoints / "model"), batch_size=1)
  requests = [("a red circle", 2, 1), ("a blue square", 1, 2), ("a green circle", 2, 3)]
  results, buckets = {}, {}
  for policy in ("pad", "split"):
    metrics = Metrics()
    batcher = Batcher(pipe, metrics, max_batch=8, policy=policy)
    jobs = [Job(pipe.prepare(request.Generate(prompts=prompt, num_images=n, seed=seed)), None)
            for prompt, n, seed in requests]
    results[policy], buckets[policy] = batcher.sample_jobs(jobs), dict(metrics.buckets)
    calls = [batcher.calls(rows) for rows in (1, 3, 7, 8)]
    assert calls == ([[1], [4], [8], [8]] if policy == "pad" else [[1], [2, 1], [4, 2, 1], [8]])
    batcher.close()
  assert buckets == {"pad": {8: 1}, "split": {4: 1, 1: 1}}
  for (codes_pad, images_pad), (codes_split, images_split) in zip(results["pad"],
                                                                  results["split"]):
    np.testing.assert_array_equal(codes_pad, codes_split)
    np.testing.assert_allclose(images_pad, images_split, atol=1e-6)
  assert [len(codes) for codes, _ in results["split"]] == [2, 1, 2]


def test_a_burst_is_batched_and_none_is_lost(server):
  before = server.get("/metrics")[1]
  answers = concurrently(lambda seed: server.post("/v1/generate", {"prompt": "a burst",
                                                                    "seed": seed}), list(range(32)))
  assert [status for status, _ in answers] == [200] * 32
  assert len({answer["images"][0] for _, answer in answers}) > 1
  after = server.get("/metrics")[1]
  assert after["requests"] - before["requests"] == 32
  assert after["sampler_calls"] - before["sampler_calls"] < 32
  assert max(int(size) for size in after["batch_sizes"]) > 1
  assert after["queue"] == 0 and after["latency_ms"]["p50"] > 0
  assert set(after) >= {"requests", "sampler_calls", "batch_sizes", "latency_ms", "compiles",
                        "queue", "stage_ms"}
  for stage in ("prepare", "sample", "decode", "respond"):  # where the burst's time went
    assert after["stage_ms"][stage] > before["stage_ms"].get(stage, 0.0)


def test_bad_requests_get_4xx_naming_the_problem(server):
  good_image = png_base64(np.zeros((32, 32, 3), np.uint8))
  bad = [
      ("generate", b"{not json", "invalid JSON"),
      ("paint", {"prompt": "x"}, "unknown mode 'paint'"),
      ("inpaint", {"prompt": "x", "image": base64.b64encode(b"no image").decode(),
                   "box": [0, 0, 8, 8]}, "is not an image file"),
      ("inpaint", {"prompt": "x", "image": png_base64(np.zeros((30, 30, 3), np.uint8)),
                   "box": [0, 0, 8, 8]}, "not a multiple of the VQGAN factor"),
      ("generate", {"prompt": "x", "num_images": 9}, "too many images"),
      ("generate", {"prompt": "a very long prompt " * 30}, "prompt too long"),
      ("generate", {"prompt": "x", "typical_mass": 1.5}, "typical_mass must lie in (0, 1]"),
      ("generate", {"prompt": "x", "guidance": 3}, "unknown fields ['guidance']"),
      ("inpaint", {"prompt": "x", "image": good_image}, "a mask image or a box"),
      ("edit", {"image": good_image}, "needs the field(s) ['prompt']"),
      ("generate", {"prompt": "a \udcff cat"}, "is not valid UTF-8 text"),
      ("generate", {"prompt": "x", "negative_prompt": "blurry"}, "v1 guides"),
  ]
  for mode, body, message in bad:
    status, answer = server.post(f"/v1/{mode}", body)
    assert 400 <= status < 500 and message in answer["error"], (mode, body, status, answer)
    assert "\n" not in answer["error"]
  status, answer = server.post("/v1/generate", {"prompt": "still serving"})
  assert status == 200 and len(answer["images"]) == 1


def test_sigterm_answers_the_requests_in_flight(tiny_checkpoints, tmp_path):
  running = Server(tiny_checkpoints / "model", tmp_path, "--max-batch", "1", "--max-wait-ms", "0")
  try:
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      futures = [pool.submit(running.post, "/v1/generate", {"prompt": "x", "seed": s})
                 for s in range(6)]
      deadline = time.monotonic() + 60
      while running.get("/metrics")[1]["queue"] < 2:  # one call at a time: the rest wait
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.01)
      running.process.send_signal(signal.SIGTERM)
      answers = [f.result() for f in futures]
    assert [status for status, _ in answers] == [200] * 6
    assert running.process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises it
  finally:
    running.stop()


@pytest.mark.slow  # a second server start-up: a minute on 2 cores
def test_warm_all_compiles_every_mode_before_serving(tiny_checkpoints, tmp_path):
  running = Server(tiny_checkpoints / "model", tmp_path, "--max-batch", "2", "--warm-all")
  try:
    before = running.get("/metrics")[1]
    # generate (whose program vary shares: noise + one CLIP embedding), inpaint and edit, at
    # buckets 1 and 2
    assert before["compiles"] == 3 * 2 and before["startup_compile_s"] > 0
    image = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    for mode, body in [("inpaint", {"prompt": "a", "image": png_base64(image), "box": [0, 0, 8, 8]}),
                       ("edit", {"prompt": "a", "image": png_base64(image)}),
                       ("vary", {"image": png_base64(image)})]:
      status, answer = running.post(f"/v1/{mode}", body)
      assert status == 200, answer
    assert running.get("/metrics")[1]["compiles"] == before["compiles"]  # nothing compiled late
  finally:
    running.stop()
