"""The HTTP app: the /v1 modes, /health, /metrics and the web page.

    POST /v1/{generate,inpaint,outpaint,edit,vary,interpolate}  JSON -> {"images", "sidecars"}
    GET  /health   200 {"status": "ok"} (the server listens only once models are loaded and the
                   batch buckets compiled)
    GET  /metrics  requests, statuses, sampler_calls, batch_sizes, buckets, latency_ms, compiles,
                   queue, stage_ms
    GET  /         the web page (static/index.html)

A refused request is answered 4xx with {"error": "<one line naming the problem>"}; one that is not
answered within the timeout gets 503.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import io
import json
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from paella_jax.cli import one_line
from paella_jax.serve import requests
from paella_jax.serve.batcher import Batcher
from paella_jax.serve.metrics import Metrics

STATIC = os.path.join(os.path.dirname(__file__), "static")


def png_base64(image) -> str:
  """(H, W, 3) float in [0, 1] -> base64 PNG, the bytes paella-sample's save_png writes."""
  from PIL import Image
  from paella_jax.images import to_uint8
  out = io.BytesIO()
  Image.fromarray(to_uint8(image)).save(out, format="PNG")
  return base64.b64encode(out.getvalue()).decode()


def create_app(pipe, batcher: Batcher, metrics: Metrics, *, inputs_dir: str,
               timeout_s: float) -> FastAPI:
  """The app over a loaded pipeline and its (warmed-up) batcher."""
  preparing = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="prepare")
  tokenizer = pipe.text_encoder().tokenizer if pipe.clip_dir else None

  def count_tokens(prompt: str) -> int:
    if tokenizer is None:
      return 0
    return len(tokenizer.hf_tokenizer(prompt)["input_ids"])

  @contextlib.asynccontextmanager
  async def lifespan(app):
    task = asyncio.create_task(batcher.run())
    yield
    task.cancel()
    preparing.shutdown(wait=False)
    batcher.close()

  app = FastAPI(title="paella-serve", lifespan=lifespan)
  app.mount("/static", StaticFiles(directory=STATIC), name="static")

  def timed(stage: str, fn):
    """`fn`, its time recorded as `stage`'s, to run in the preparing threads."""
    def run(*args):
      start = time.perf_counter()
      try:
        return fn(*args)
      finally:
        metrics.record_stage(stage, time.perf_counter() - start)
    return run

  def prepare(mode: str, raw: bytes):
    """A request's body -> (its typed request, the prepared rows); BadRequest names what is
    refused."""
    try:
      body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise requests.BadRequest(f"invalid JSON: {e}") from None
    req = requests.to_request(mode, body, inputs_dir, batcher.max_batch,
                              tokenizer.max_length if tokenizer else 0, count_tokens)
    prepared = pipe.prepare(req)
    if prepared.rows > batcher.max_batch:
      raise requests.BadRequest(f"too many images: {prepared.rows}, this server samples at "
                                f"most {batcher.max_batch} per request (--max-batch)", 413)
    return req, prepared

  def respond(req, prepared, codes, images) -> dict:
    """The answer's body: PNGs, codes and sidecars."""
    return {"images": [png_base64(image) for image in images] if images is not None else [],
            "codes": codes.tolist(),
            "sidecars": [requests.sidecar(pipe, req, prepared, i) for i in range(len(codes))]}

  async def answer(mode: str, request: Request) -> tuple[int, dict]:
    loop = asyncio.get_running_loop()
    try:
      req, prepared = await loop.run_in_executor(preparing, timed("prepare", prepare), mode,
                                                 await request.body())
      codes, images = await asyncio.wait_for(batcher.submit(prepared), timeout_s)
    except requests.BadRequest as e:
      return e.status, {"error": one_line(e)}
    except (ValueError, OSError) as e:
      return 400, {"error": one_line(e)}
    except asyncio.TimeoutError:
      return 503, {"error": f"not answered within {timeout_s:g} s (--timeout-s); the server is "
                            "busy, retry later"}
    return 200, await loop.run_in_executor(preparing, timed("respond", respond), req, prepared,
                                           codes, images)

  @app.post("/v1/{mode}")
  async def v1(mode: str, request: Request):
    start = time.monotonic()
    status, payload = await answer(mode, request)
    metrics.record_request(status, time.monotonic() - start)
    return JSONResponse(payload, status)

  @app.get("/health")
  async def health():
    return {"status": "ok", "buckets": batcher.buckets, "model": pipe.model_id,
            "startup_compile_s": round(metrics.startup_compile_s, 3)}

  @app.get("/metrics")
  async def get_metrics():
    return metrics.to_dict(batcher.queued)

  @app.get("/")
  async def page():
    return FileResponse(os.path.join(STATIC, "index.html"))

  return app
