"""The HTTP app: the /v1 modes, /health, /metrics and the web page.

    POST /v1/{generate,inpaint,outpaint,edit,vary,interpolate}  JSON -> {"images", "sidecars"}
    GET  /health   200 {"status": "ok"} (the server listens only once models are loaded and the
                   generation buckets compiled); 503 {"status": "busy"} while one sampler call
                   has run longer than the request timeout
    GET  /metrics  requests, statuses, sampler_calls, batch_sizes, buckets, latency_ms, compiles,
                   queue, stage_ms
    GET  /         the web page (static/index.html)

Every error is JSON, {"error": "<one line naming the problem>", "field": "<the JSON field at
fault, or null>"}, and counted in /metrics by status: 400 a bad field, 401 a missing or wrong
API key, 403 a foreign Origin or Host, 404 an unknown mode or path, 413 a body, image, prompt or
image count past its bound, 415 a body that is not JSON, 503 a full queue or a request not
answered within the timeout, 500 anything unforeseen. Who may call the API (`Access`): requests
whose Host is not this server's (DNS rebinding) or whose Origin is another site's are refused
unless allowed, and with an API key every /v1 call and /metrics must present it.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import hmac
import io
import json
import logging
import os
import time
import urllib.parse

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from paella_jax.checks import FieldError
from paella_jax.cli import one_line
from paella_jax.serve import requests
from paella_jax.serve.batcher import Batcher, Busy
from paella_jax.serve.inputs import InputStore
from paella_jax.serve.limits import Limits
from paella_jax.serve.metrics import Metrics

STATIC = os.path.join(os.path.dirname(__file__), "static")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("paella_jax.serve")


@dataclasses.dataclass(frozen=True)
class Access:
  """Who may call the API. hosts: the Host names this server answers to (empty: any, for a
  public bind without --allow-host); origins: the browser origins besides the server's own
  allowed to call it (--allow-origin); api_key: required on /v1 and /metrics when set, as
  `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
  hosts: tuple[str, ...] = LOOPBACK_NAMES
  origins: tuple[str, ...] = ()
  api_key: str | None = None

  def refusal(self, request: Request, api: bool) -> tuple[int, str] | None:
    """(status, error) when `request` may not be answered; `api`: a /v1 call or /metrics."""
    host = urllib.parse.urlsplit("//" + request.headers.get("host", "")).hostname or ""
    if self.hosts and host not in self.hosts:
      return 403, (f"Host {host!r} is not this server's (allowed: {', '.join(self.hosts)}; "
                   "--allow-host)")
    origin = request.headers.get("origin")
    if origin is not None and origin not in self.origins and (
        urllib.parse.urlsplit(origin).netloc != request.headers.get("host")):
      return 403, f"cross-origin requests from {origin:.80} are refused (--allow-origin)"
    if api and self.api_key is not None:
      given = request.headers.get("x-api-key") or request.headers.get(
          "authorization", "").removeprefix("Bearer ").strip()
      if not hmac.compare_digest(given.encode(), self.api_key.encode()):
        return 401, "this server needs an API key: Authorization: Bearer KEY (or X-API-Key)"
    return None


def png_base64(image) -> str:
  """(H, W, 3) float in [0, 1] -> base64 PNG, the bytes paella-sample's save_png writes."""
  from PIL import Image
  from paella_jax.images import to_uint8
  out = io.BytesIO()
  Image.fromarray(to_uint8(image)).save(out, format="PNG")
  return base64.b64encode(out.getvalue()).decode()


def error(status: int, message: str, field: str | None = None,
          headers: dict | None = None) -> JSONResponse:
  return JSONResponse({"error": message, "field": field}, status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
  """The body, refused (413) past `limit` bytes, whether or not Content-Length says so."""
  declared = request.headers.get("content-length")
  if declared is not None and declared.isdigit() and int(declared) > limit:
    raise requests.BadRequest(f"the body is {int(declared):,} bytes, more than the {limit:,} "
                              "allowed (--max-body-mb)", 413)
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise requests.BadRequest(f"the body is more than the {limit:,} bytes allowed "
                                "(--max-body-mb)", 413)
    chunks.append(chunk)
  return b"".join(chunks)


def create_app(pipe, batcher: Batcher, metrics: Metrics, *, inputs: InputStore,
               timeout_s: float, limits: Limits = Limits(), access: Access = Access(),
               api_docs: bool = False) -> FastAPI:
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
    preparing.shutdown(wait=False, cancel_futures=True)
    batcher.close(0)

  docs = dict(docs_url="/docs", redoc_url=None, openapi_url="/openapi.json") if api_docs else (
      dict(docs_url=None, redoc_url=None, openapi_url=None))
  app = FastAPI(title="paella-serve", lifespan=lifespan, **docs)
  app.mount("/static", StaticFiles(directory=STATIC), name="static")

  @app.exception_handler(HTTPException)
  async def http_error(request: Request, e: HTTPException):
    return error(e.status_code, str(e.detail))

  @app.exception_handler(Exception)
  async def internal_error(request: Request, e: Exception):
    log.exception("unforeseen error answering %s", request.url.path)
    return error(500, f"internal error: {one_line(e)}")

  @app.middleware("http")
  async def guard(request: Request, call_next):
    """Refuses foreign hosts and origins (and, for the API, a missing key) before routing;
    counts every API answer in /metrics by status."""
    start = time.monotonic()
    api = request.url.path.startswith("/v1/") or request.url.path == "/metrics"
    refusal = access.refusal(request, api)
    response = error(*refusal) if refusal else await call_next(request)
    if refusal and refusal[0] == 401:
      response.headers["WWW-Authenticate"] = "Bearer"
    if request.url.path.startswith("/v1/"):
      metrics.record_request(response.status_code, time.monotonic() - start)
    return response

  if access.origins:  # outermost: a browser's preflight carries no API key
    app.add_middleware(CORSMiddleware, allow_origins=list(access.origins),
                       allow_methods=["GET", "POST"],
                       allow_headers=["content-type", "authorization", "x-api-key"])

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
    refused. The request's images are stored only once it is prepared."""
    try:
      body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise requests.BadRequest(f"invalid JSON: {e}") from None
    req = requests.to_request(mode, body, limits, tokenizer.max_length if tokenizer else 0,
                              count_tokens)
    try:
      prepared = pipe.prepare(req)
    except FieldError as e:
      raise requests.BadRequest(str(e), field=requests.json_field(mode, e.field)) from None
    return requests.with_stored_images(req, inputs), prepared

  def respond(req, prepared, codes, images) -> dict:
    """The answer's body: PNGs, codes and sidecars."""
    return {"images": [png_base64(image) for image in images] if images is not None else [],
            "codes": codes.tolist(),
            "sidecars": [requests.sidecar(pipe, req, prepared, i) for i in range(len(codes))]}

  in_flight = 0

  async def answer(mode: str, request: Request) -> JSONResponse:
    nonlocal in_flight
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
      return error(415, "the API takes JSON: send Content-Type: application/json")
    if in_flight >= limits.max_queue:
      return error(503, f"the server is full ({limits.max_queue} requests in progress, "
                        "--max-queue); retry later", headers={"Retry-After": "1"})
    in_flight += 1
    loop = asyncio.get_running_loop()
    try:
      raw = await read_body(request, limits.max_body_bytes)
      req, prepared = await loop.run_in_executor(preparing, timed("prepare", prepare), mode, raw)
      codes, images = await asyncio.wait_for(batcher.submit(prepared), timeout_s)
      return JSONResponse(await loop.run_in_executor(
          preparing, timed("respond", respond), req, prepared, codes, images))
    except asyncio.TimeoutError:  # before OSError: on Python >= 3.11 it is one
      return error(503, f"not answered within {timeout_s:g} s (--timeout-s); the server is "
                        "busy, retry later", headers={"Retry-After": "5"})
    except Busy as e:
      return error(503, f"{e}; retry later", headers={"Retry-After": "1"})
    except requests.BadRequest as e:
      return error(e.status, one_line(e), e.field)
    except FieldError as e:
      return error(400, one_line(e), requests.json_field(mode, e.field))
    except (ValueError, OSError) as e:
      return error(400, one_line(e))
    except Exception as e:  # unforeseen: this request fails, the server goes on
      log.exception("unforeseen error answering /v1/%s", mode)
      return error(500, f"internal error: {one_line(e)}")
    finally:
      in_flight -= 1

  @app.post("/v1/{mode}")
  async def v1(mode: str, request: Request):
    return await answer(mode, request)

  @app.get("/health")
  async def health():
    started = batcher.call_started
    stuck = started is not None and time.monotonic() - started > timeout_s
    return JSONResponse({"status": "busy" if stuck else "ok", "buckets": batcher.buckets,
                         "model": pipe.model_id,
                         "startup_compile_s": round(metrics.startup_compile_s, 3)},
                        503 if stuck else 200)

  @app.get("/metrics")
  async def get_metrics():
    return metrics.to_dict(batcher.queued)

  @app.get("/")
  async def page():
    return FileResponse(os.path.join(STATIC, "index.html"))

  return app
