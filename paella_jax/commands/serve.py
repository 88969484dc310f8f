"""paella-serve: loads a checkpoint, compiles the batch buckets, then serves HTTP on --host:--port.

    paella-serve --checkpoint ckpts/paella_v1 --port 8000 --max-batch 16

The server listens once the models are loaded and every bucket (powers of two up to --max-batch)
is compiled for generation with the model's default settings; the other modes compile a bucket
on its first use, or at start-up too with --warm-all (inpaint, edit and, with a CLIP vision
tower, vary, at the model's image size and default settings). /health and /metrics report the
start-up compile seconds; with the persistent compilation cache warm (a restart), they are the
seconds of reading the programs back. SIGTERM (or Ctrl-C) stops accepting connections, answers
the requests already received, then exits.
"""

from __future__ import annotations

import argparse
import os
import time

from paella_jax.commands.options import add_model_options


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="paella-serve", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_model_options(parser, None)
  parser.add_argument("--host", default="127.0.0.1")
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
  parser.add_argument("--warm-all", action="store_true",
                      help="also compile inpaint, edit and vary at start-up (default: on first "
                           "use)")
  parser.add_argument("--inputs-dir", default="serve_inputs",
                      help="where uploaded images are kept (sidecars name them, for replay)")
  args = parser.parse_args(argv)
  if args.max_wait_ms < 0 or args.timeout_s <= 0:
    parser.error("--max-wait-ms must be >= 0 and --timeout-s > 0")
  args.checkpoint = os.path.abspath(args.checkpoint)
  args.inputs_dir = os.path.abspath(args.inputs_dir)
  return args


def main(argv=None) -> None:
  """Loads, compiles, serves; bad arguments or checkpoints raise ValueError/OSError."""
  import uvicorn
  from paella_jax.pipeline import Pipeline
  from paella_jax.serve.app import create_app
  from paella_jax.serve.batcher import Batcher, warm_up_requests
  from paella_jax.serve.metrics import Metrics
  args = parse_args(argv)
  # a request encodes its few prompts or its one image alone: chunks of one row, not padded to 64
  pipe = Pipeline.from_checkpoint(args.checkpoint, clip=args.clip, vqgan=args.vqgan,
                                  byt5=args.byt5, batch_size=1)
  metrics = Metrics()
  batcher = Batcher(pipe, metrics, args.max_batch, args.max_wait_ms, args.bucket_policy)
  start = time.perf_counter()
  for prepared in warm_up_requests(pipe, args.warm_all):
    batcher.warm_up(prepared)
  metrics.startup_compile_s = time.perf_counter() - start
  print(f"compiled buckets {batcher.buckets} ({batcher.policy}) in "
        f"{metrics.startup_compile_s:.1f} s; serving on http://{args.host}:{args.port}",
        flush=True)
  app = create_app(pipe, batcher, metrics, inputs_dir=args.inputs_dir, timeout_s=args.timeout_s)
  uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
              timeout_graceful_shutdown=int(args.timeout_s) + 1)
