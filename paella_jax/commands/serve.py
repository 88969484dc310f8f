"""paella-serve: loads a checkpoint, compiles the batch buckets, then serves HTTP on --host:--port.

    paella-serve --checkpoint ckpts/paella_v1 --port 8000 --max-batch 16
    PAELLA_SERVE_API_KEY=... paella-serve --checkpoint ... --host 0.0.0.0 --allow-host my.server

The server listens once the models are loaded and every bucket (powers of two up to --max-batch)
is compiled for generation with the model's default settings; the other modes compile a bucket
on its first use, or at start-up too with --warm-all (inpaint, edit and, with a CLIP vision
tower, vary, at the model's image size and default settings). /health and /metrics report the
start-up compile seconds; with the persistent compilation cache warm (a restart), they are the
seconds of reading the programs back. SIGTERM (or Ctrl-C) stops accepting connections, answers
the requests already received within --grace-s, then exits (a sampler call still running then
is abandoned).

It binds 127.0.0.1 and answers only requests addressed to it by a loopback name; a public bind
(--host 0.0.0.0) warns, and should come with an API key (--api-key or $PAELLA_SERVE_API_KEY) and
--allow-host. Browsers on other sites are refused unless named by --allow-origin. Every request
is bounded (see docs/serve.md#limits and paella_jax/serve/limits.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time

from paella_jax.commands.options import add_model_options

API_KEY_ENV = "PAELLA_SERVE_API_KEY"


def parse_args(argv=None) -> argparse.Namespace:
  from paella_jax.serve.limits import MIB, Limits
  defaults = Limits()
  parser = argparse.ArgumentParser(prog="paella-serve", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_model_options(parser, None)
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default loopback only; 0.0.0.0: every interface)")
  parser.add_argument("--port", type=int, default=8000)
  parser.add_argument("--max-batch", type=int, default=16,
                      help="most rows per sampler call (and images per request)")
  parser.add_argument("--max-wait-ms", type=float, default=20.0,
                      help="how long a request waits for others to share its sampler call")
  parser.add_argument("--bucket-policy", choices=("auto", "pad", "split"), default="auto",
                      help="a group of rows is one call padded to the next bucket (pad) or calls "
                           "of exact buckets, 9 rows -> 8 + 1 (split); auto: split on the CPU, "
                           "where every row costs the same, pad on accelerators")
  parser.add_argument("--timeout-s", type=float, default=120.0,
                      help="a request not answered within this is answered 503")
  parser.add_argument("--grace-s", type=float, default=30.0,
                      help="on SIGTERM, how long the requests already received may take")
  parser.add_argument("--warm-all", action="store_true",
                      help="also compile inpaint, edit and vary at start-up (default: on first "
                           "use)")
  parser.add_argument("--inputs-dir", default="serve_inputs",
                      help="where uploaded images are kept (sidecars name them, for replay)")
  parser.add_argument("--inputs-quota-mb", type=float, default=1024.0,
                      help="most megabytes kept in --inputs-dir (the oldest go first)")
  parser.add_argument("--inputs-max-age-h", type=float, default=24.0 * 7,
                      help="hours an uploaded image is kept")
  limits = parser.add_argument_group("limits of one request")
  limits.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / MIB)
  limits.add_argument("--max-prompt-bytes", type=int, default=defaults.max_prompt_bytes)
  limits.add_argument("--max-steps", type=int, default=defaults.max_steps)
  limits.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels,
                      help="an uploaded image (read from its header) or an outpainting canvas")
  limits.add_argument("--max-queue", type=int, default=defaults.max_queue,
                      help="requests in the server at once; past it 503 + Retry-After")
  limits.add_argument("--max-programs", type=int, default=defaults.max_programs,
                      help="sampler programs kept compiled in memory")
  reach = parser.add_argument_group("who may call it")
  reach.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                     help=f"required on /v1 and /metrics (default ${API_KEY_ENV}); prefer the "
                          "variable: a flag shows in the process list")
  reach.add_argument("--allow-host", action="append", default=[],
                     help="a Host name the server answers to besides the loopback names "
                          "(repeatable); with a public bind and none given, any Host")
  reach.add_argument("--allow-origin", action="append", default=[],
                     help="a browser origin (https://app.example) allowed to call the API "
                          "(repeatable; CORS)")
  reach.add_argument("--api-docs", action="store_true", help="serve /docs and /openapi.json")
  args = parser.parse_args(argv)
  if args.max_wait_ms < 0 or args.timeout_s <= 0 or args.grace_s < 0:
    parser.error("--max-wait-ms and --grace-s must be >= 0 and --timeout-s > 0")
  if args.api_key is not None and len(args.api_key) < 16:
    parser.error("--api-key must have at least 16 characters")
  try:
    args.limits = Limits(max_body_bytes=int(args.max_body_mb * MIB),
                         max_prompt_bytes=args.max_prompt_bytes, max_steps=args.max_steps,
                         max_rows=args.max_batch, max_image_pixels=args.max_image_pixels,
                         max_queue=args.max_queue, max_programs=args.max_programs)
  except ValueError as e:
    parser.error(str(e))
  args.checkpoint = os.path.abspath(args.checkpoint)
  args.inputs_dir = os.path.abspath(args.inputs_dir)
  return args


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def access_of(args):
  """The server's `Access` from its flags; warns on a public bind."""
  from paella_jax.serve.app import LOOPBACK_NAMES, Access
  public = not is_loopback(args.host)
  if public:
    print(f"WARNING: binding {args.host}: the server is reachable from other machines"
          + ("" if args.api_key else f"; anyone who reaches it can use it: set ${API_KEY_ENV}")
          + ("" if args.allow_host else "; any Host name is answered (--allow-host NAME limits "
             "it)"), file=sys.stderr, flush=True)
  hosts = () if public and not args.allow_host else (*LOOPBACK_NAMES, *args.allow_host)
  return Access(hosts=hosts, origins=tuple(args.allow_origin), api_key=args.api_key)


def main(argv=None) -> None:
  """Loads, compiles, serves; bad arguments or checkpoints raise ValueError/OSError."""
  import uvicorn
  from paella_jax.pipeline import Pipeline
  from paella_jax.serve.app import create_app
  from paella_jax.serve.batcher import Batcher, warm_up_requests
  from paella_jax.serve.inputs import InputStore
  from paella_jax.serve.metrics import Metrics
  args = parse_args(argv)
  access = access_of(args)
  inputs = InputStore(args.inputs_dir, int(args.inputs_quota_mb * 2 ** 20),
                      args.inputs_max_age_h * 3600)
  # a request decodes its few images alone: VQGAN chunks of one row, not padded to 64
  pipe = Pipeline.from_checkpoint(args.checkpoint, clip=args.clip, vqgan=args.vqgan,
                                  byt5=args.byt5, batch_size=1, lora=args.lora,
                                  quantize=args.quantize)
  metrics = Metrics()
  batcher = Batcher(pipe, metrics, args.max_batch, args.max_wait_ms, args.bucket_policy,
                    args.limits.max_queue, args.limits.max_programs)
  start = time.perf_counter()
  for prepared in warm_up_requests(pipe, args.warm_all):
    batcher.warm_up(prepared)
  metrics.startup_compile_s = time.perf_counter() - start
  print(f"compiled buckets {batcher.buckets} ({batcher.policy}) in "
        f"{metrics.startup_compile_s:.1f} s; serving on http://{args.host}:{args.port}",
        flush=True)
  app = create_app(pipe, batcher, metrics, inputs=inputs, timeout_s=args.timeout_s,
                   limits=args.limits, access=access, api_docs=args.api_docs)
  uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
              timeout_graceful_shutdown=max(1, round(args.grace_s)))
  # uvicorn waited up to --grace-s for the requests in flight; a call none awaits any more (its
  # request timed out or was cut by the grace period) is not waited for
  if not batcher.close(1.0):
    print("a sampler call was still running after the grace period (--grace-s): exiting "
          "without it", file=sys.stderr, flush=True)
    os._exit(0)
