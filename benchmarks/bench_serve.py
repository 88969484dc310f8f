"""paella-serve under load: concurrent clients against a real server, batching against one at a time.

C clients (default 16) each send R generate requests (one image, own seeds) back to back to a
`python -m paella_jax.serve` on 127.0.0.1, with batching (--max-batch B, --max-wait-ms W; each
group padded to one bucket, then split into exact buckets: --bucket-policy pad, split), then with
--max-batch 1 (one request per sampler call). Reported per run: throughput (requests/s
over the wall time of all requests), client-side latency p50/p99, the server's sampler calls and
batch sizes, and where the server's time went (its /metrics stage_ms): per request preparing
(JSON, arguments, text encoding) and responding (PNGs, sidecars), per sampler call sampling and
the VQGAN decode. Also reported: the ceiling, the requests per second that the batched run's
sampler and decode alone allow (rows per call over their time per call), against one request at a
time: what batching could give on this hardware if HTTP, text encoding and PNGs cost nothing.
Without --checkpoint the tiny configs are built with random weights (speed does
not depend on their values).

  python benchmarks/bench_serve.py                         # tiny model, 16 clients
  python benchmarks/bench_serve.py --checkpoint ckpts/paella_v1 --clients 32 --max-batch 32
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import write_results

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoints(root: Path) -> Path:
  """Random tiny CLIP, VQGAN and token predictor as checkpoints; returns the model directory."""
  sys.path.insert(0, str(ROOT))
  import jax
  import jax.numpy as jnp
  from configs import clip_tiny, tiny, vqgan_tiny
  from paella_jax.checkpoint import save_model
  from paella_jax.encoders.clip import random_clip, save_clip
  from paella_jax.encoders.vq import save_vqgan
  from paella_jax.models.paella import build_model, init_params
  from paella_jax.models.vqgan import vqgan_from_config
  save_clip(root / "clip", *random_clip(clip_tiny.get_config().model))
  vq = vqgan_from_config(vqgan_tiny.get_config().model)
  save_vqgan(root / "vqgan", vq, vq.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
  config = tiny.get_config()
  model = build_model(config.model)
  save_model(root / "model", init_params(model, jax.random.key(0), config.latent_shape),
             "paella_v1", model.architecture(),
             meta={"latent_shape": list(config.latent_shape), "sampling": config.sampling.to_dict(),
                   "clip_checkpoint": "../clip", "vqgan_checkpoint": "../vqgan"})
  return root / "model"


def call(url: str, path: str, body=None) -> dict:
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST",
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=600) as response:
    return json.loads(response.read())


def run(checkpoint: Path, inputs: str, clients: int, requests: int, flags: list[str],
        env: dict[str, str]) -> dict:
  """One server with `flags` and environment `env`; C clients x R requests; the measured row."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  server = subprocess.Popen([sys.executable, "-m", "paella_jax.serve", "--checkpoint",
                             str(checkpoint), "--port", str(port), "--inputs-dir", inputs, *flags],
                            cwd=ROOT, env=env)
  try:
    while True:
      try:
        call(url, "/health")
        break
      except OSError:
        if server.poll() is not None:
          raise RuntimeError("the server exited") from None
        time.sleep(0.5)
    call(url, "/v1/generate", {"prompt": "warm-up"})

    def client(c: int) -> list[float]:
      latencies = []
      for r in range(requests):
        start = time.perf_counter()
        call(url, "/v1/generate", {"prompt": f"client {c}", "seed": c * requests + r})
        latencies.append(time.perf_counter() - start)
      return latencies

    before = call(url, "/metrics")
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
      latencies = np.concatenate(list(pool.map(client, range(clients))))
    wall = time.perf_counter() - start
    after = call(url, "/metrics")
  finally:
    server.terminate()
    server.wait()
  calls = after["sampler_calls"] - before["sampler_calls"]
  spent = lambda stage: after["stage_ms"].get(stage, 0.0) - before["stage_ms"].get(stage, 0.0)
  return dict(flags=" ".join(flags), clients=clients, requests=len(latencies), wall_s=wall,
              requests_per_s=len(latencies) / wall, p50_ms=1e3 * np.percentile(latencies, 50),
              p99_ms=1e3 * np.percentile(latencies, 99), sampler_calls=calls,
              rows_per_call=len(latencies) / calls, batch_sizes=after["batch_sizes"],
              prepare_ms_per_request=spent("prepare") / len(latencies),
              respond_ms_per_request=spent("respond") / len(latencies),
              sample_ms_per_call=spent("sample") / calls,
              decode_ms_per_call=spent("decode") / calls)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", help="model directory (default: random tiny checkpoints)")
  parser.add_argument("--clients", type=int, default=16)
  parser.add_argument("--requests", type=int, default=32, help="requests per client")
  parser.add_argument("--max-batch", type=int, default=16)
  parser.add_argument("--max-wait-ms", type=float, default=20.0)
  args = parser.parse_args()
  # The server gets the environment as it is; this process (the tiny checkpoints, the backend's
  # name) allocates as it goes, leaving an accelerator's memory to the server's preallocation.
  server_env = dict(os.environ)
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  with tempfile.TemporaryDirectory() as tmp:
    checkpoint = Path(args.checkpoint) if args.checkpoint else tiny_checkpoints(Path(tmp))
    rows = []
    batched = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    for name, flags in [("batched, pad", batched + ["--bucket-policy", "pad"]),
                        ("batched, split", batched + ["--bucket-policy", "split"]),
                        ("one at a time", ["--max-batch", "1", "--max-wait-ms", "0"])]:
      row = dict(run=name, **run(checkpoint, os.path.join(tmp, "inputs"), args.clients,
                                  args.requests, flags, server_env))
      rows.append(row)
      print(f"{name:14s} {row['requests_per_s']:7.2f} req/s  p50 {row['p50_ms']:8.1f} ms  "
            f"p99 {row['p99_ms']:8.1f} ms  {row['sampler_calls']} sampler calls "
            f"({row['rows_per_call']:.1f} rows each)\n{'':14s} per request: prepare "
            f"{row['prepare_ms_per_request']:.1f} ms, respond "
            f"{row['respond_ms_per_request']:.1f} ms; "
            f"per call: sample {row['sample_ms_per_call']:.1f} ms, decode "
            f"{row['decode_ms_per_call']:.1f} ms", flush=True)
  alone = rows[-1]["requests_per_s"]
  speedup = {row["run"]: row["requests_per_s"] / alone for row in rows[:-1]}
  ceiling = {row["run"]: compute_bound(row) / alone for row in rows[:-1]}
  print("batching: " + ", ".join(f"{name} {x:.1f}x" for name, x in speedup.items())
        + " the throughput of one request at a time; its sampler and decode alone would allow "
        + ", ".join(f"{name} {x:.1f}x" for name, x in ceiling.items()))
  write_results("serve_" + ("tiny" if not args.checkpoint else Path(args.checkpoint).name), rows,
                speedup=speedup, ceiling=ceiling)


def compute_bound(row: dict) -> float:
  """Requests per second a run's sampler and decode alone allow (one image per request)."""
  return 1e3 * row["rows_per_call"] / (row["sample_ms_per_call"] + row["decode_ms_per_call"])


if __name__ == "__main__":
  main()
