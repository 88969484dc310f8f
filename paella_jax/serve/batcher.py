"""Groups concurrent requests into sampler calls.

Requests arrive on an asyncio queue as jobs (one request's prepared rows). Jobs whose rows can
share a sampler call (same steps, start step, renoise mode, typical_min_tokens, guidance and
typical filtering on or off, input kind and shapes, conditioning entries and shapes: for Paella v3
the ByT5 length too, so no request is padded for another) form a group; a group is sampled when it holds
`max_batch` rows or when its oldest job has waited `max_wait_s`. The traced settings (cfg,
temperatures, typical mass) go per row, and every row draws from its own key, so a request gets
the same codes whatever it is batched with. Only the buckets (powers of two up to `max_batch`)
are ever compiled: a group is either one call padded to the next bucket or, where every row
costs the same (the CPU), split into exact buckets (9 rows -> 8 + 1; `bucket_policy`). Sampling
and decoding run in one worker thread, so the event loop keeps answering while the sampler runs.

One request never harms another: a call that fails is retried request by request, so only the
request at fault gets the error; a request whose answer is no longer awaited (timed out) is
dropped before its call. At most `max_programs` sampler programs stay compiled in memory: a new
one past that drops them all (`jax.clear_caches`), and they come back from the persistent
compilation cache on their next use. `max_queue` bounds the requests waiting (`Busy` past it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time

import jax
import numpy as np

from paella_jax.encoders.vq import VQGANCodec
from paella_jax.families import concat_rows, map_rows, pad_rows, repeat_rows, row_signature
from paella_jax.pipeline import Prepared
from paella_jax.sampler_settings import SamplerSettings
from paella_jax.sampling import row_keys, sample

log = logging.getLogger("paella_jax.serve")


class Busy(RuntimeError):
  """The queue is full: the server answers 503 and the client retries later."""


def buckets(max_batch: int) -> list[int]:
  """Powers of two below max_batch, and max_batch: the batch sizes the sampler is called with."""
  if max_batch < 1:
    raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
  sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch]
  return sizes + [max_batch]


def bucket_policy(policy: str) -> str:
  """"pad" (one call per group, padded to the next bucket: on accelerators a call of 16 rows
  costs little more than one of 9), "split" (exact buckets: on a CPU each row costs the same,
  so padding is waste) or "auto" (split on the CPU, pad elsewhere)."""
  if policy == "auto":
    return "split" if jax.default_backend() == "cpu" else "pad"
  if policy not in ("pad", "split"):
    raise ValueError(f"--bucket-policy must be auto, pad or split, got {policy!r}")
  return policy


@dataclasses.dataclass
class Job:
  """One request's rows; `future` receives (codes (N, h, w), images (N, H, W, 3) or None)."""
  prepared: Prepared
  future: asyncio.Future
  arrived: float = dataclasses.field(default_factory=time.monotonic)

  @property
  def rows(self) -> int:
    return self.prepared.rows

  @property
  def group(self) -> tuple:
    """What rows must share to go through one sampler call."""
    inputs = self.prepared.inputs
    tokens = inputs.get("init_tokens")
    shape = inputs.get("latent_shape") if tokens is None else np.shape(tokens)[1:]
    kind = "noise" if tokens is None else "tokens" if inputs.get("mask") is None else "masked"
    return (self.prepared.settings.shared_key, row_signature(self.prepared.cond),
            row_signature(self.prepared.uncond), kind, tuple(shape))


class Batcher:
  """Batches jobs of `pipe` (a `Pipeline`); `metrics` (a `Metrics`) counts calls and compiles."""

  def __init__(self, pipe, metrics, max_batch: int = 16, max_wait_ms: float = 20.0,
               policy: str = "auto", max_queue: int = 256, max_programs: int = 64):
    self.pipe, self.metrics = pipe, metrics
    self.buckets = buckets(max_batch)
    self.policy = bucket_policy(policy)
    self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1e3
    self.max_queue, self.max_programs = max_queue, max_programs
    self.queue: asyncio.Queue[Job] = asyncio.Queue()
    self._groups: dict[tuple, list[Job]] = {}
    self._compiled: set[tuple] = set()
    self._decoders = _bucket_decoders(pipe, self.buckets)
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sampler")
    self.call_started: float | None = None  # monotonic start of the running sampler call
    self._idle = threading.Event()
    self._idle.set()

  @property
  def queued(self) -> int:
    """Jobs waiting for a sampler call."""
    return self.queue.qsize() + sum(len(jobs) for jobs in self._groups.values())

  async def submit(self, prepared: Prepared):
    """Queues a request's rows; resolves to (codes, images) once they are sampled."""
    if prepared.rows > self.max_batch:
      raise ValueError(f"too many images: {prepared.rows} rows, at most {self.max_batch} "
                       "per request (--max-batch)")
    if self.queued >= self.max_queue:
      raise Busy(f"the queue is full ({self.max_queue} requests waiting, --max-queue)")
    job = Job(prepared, asyncio.get_running_loop().create_future())
    await self.queue.put(job)
    return await job.future

  async def run(self) -> None:
    """The batching loop (a task for the server's lifetime)."""
    loop = asyncio.get_running_loop()
    getter = None  # kept across waits: a timed-out wait must not drop a job being taken
    while True:
      ready = self._ready()
      if ready is None:
        getter = getter or asyncio.ensure_future(self.queue.get())
        await asyncio.wait({getter}, timeout=self._next_deadline())
        if getter.done():
          job, getter = getter.result(), None
          self._groups.setdefault(job.group, []).append(job)
        continue
      jobs = self._take(ready)
      if not jobs:
        continue
      try:
        outputs = await loop.run_in_executor(self._worker, self._sample_alone_on_failure, jobs)
      except Exception as e:  # the worker itself failed (shut down): answer, go on
        outputs = [e] * len(jobs)
      for job, output in zip(jobs, outputs):
        if job.future.done():
          continue
        if isinstance(output, Exception):
          job.future.set_exception(output)
        else:
          job.future.set_result(output)

  def _drain(self) -> None:
    while not self.queue.empty():
      job = self.queue.get_nowait()
      self._groups.setdefault(job.group, []).append(job)

  def _ready(self) -> tuple | None:
    """A group to sample now: a full one, else the one whose oldest job waited longest, once
    it has waited max_wait."""
    self._drain()
    for key in list(self._groups):
      self._groups[key] = [job for job in self._groups[key] if not job.future.done()]
      if not self._groups[key]:
        del self._groups[key]
    if not self._groups:
      return None
    full = [k for k, jobs in self._groups.items() if sum(j.rows for j in jobs) >= self.max_batch]
    if full:
      return full[0]
    oldest = min(self._groups, key=lambda k: self._groups[k][0].arrived)
    if time.monotonic() - self._groups[oldest][0].arrived >= self.max_wait_s:
      return oldest
    return None

  def _next_deadline(self) -> float | None:
    if not self._groups:
      return None
    oldest = min(jobs[0].arrived for jobs in self._groups.values())
    return max(oldest + self.max_wait_s - time.monotonic(), 0.0)

  def _take(self, key: tuple) -> list[Job]:
    """The group's oldest jobs that fit in max_batch rows together."""
    jobs, rows, rest = [], 0, []
    for job in self._groups.pop(key):
      if rows + job.rows <= self.max_batch and not rest:
        jobs.append(job)
        rows += job.rows
      else:
        rest.append(job)
    if rest:
      self._groups[key] = rest
    return jobs

  def _sample_alone_on_failure(self, jobs: list[Job]) -> list:
    """`sample_jobs(jobs)`; if that call fails, each job again on its own, so that only the
    job at fault gets its exception."""
    self.call_started = time.monotonic()
    self._idle.clear()
    try:
      try:
        return self.sample_jobs(jobs)
      except Exception as e:
        if len(jobs) == 1:
          log.warning("a sampler call failed: %s: %s", type(e).__name__, e)
          return [e]
        log.warning("a call of %d requests failed (%s: %s); sampling them one by one",
                    len(jobs), type(e).__name__, e)
        return [self._one(job) for job in jobs]
    finally:
      self.call_started = None
      self._idle.set()

  def _one(self, job: Job):
    try:
      return self.sample_jobs([job])[0]
    except Exception as e:
      log.warning("a request failed on its own: %s: %s", type(e).__name__, e)
      return e

  def calls(self, rows: int) -> list[int]:
    """The bucket of each sampler call for a group of `rows` rows: one call padded to the next
    bucket ("pad"), or exact buckets, largest first ("split": 9 rows -> 8 + 1)."""
    if self.policy == "pad":
      return [next(b for b in self.buckets if b >= rows)]
    sizes = []
    while rows:
      sizes.append(max(b for b in self.buckets if b <= rows))
      rows -= sizes[-1]
    return sizes

  def sample_jobs(self, jobs: list[Job], record: bool = True) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The jobs' rows through the sampler in the calls of `calls`, each padded to its bucket
    and decoded with one program per bucket (padded rows too); `record` counts the calls in the
    metrics' sampler calls."""
    first = jobs[0].prepared
    rows = sum(job.rows for job in jobs)
    cat = lambda name: np.concatenate([np.asarray(job.prepared.inputs[name]) for job in jobs])
    # every row's key as the pipeline gives it (row_keys of its request's seed), as host data
    key_data = np.concatenate([np.asarray(jax.random.key_data(row_keys(job.prepared.seed,
                                                                         job.rows)))
                               for job in jobs])
    settings = SamplerSettings.per_row([(job.prepared.settings, job.rows) for job in jobs])
    row_args, kwargs = {}, {}
    if "init_tokens" in first.inputs:
      row_args["init_tokens"] = cat("init_tokens")
      if first.inputs.get("mask") is not None:
        row_args["mask"] = cat("mask")
    else:
      kwargs["latent_shape"] = first.inputs["latent_shape"]
    cond = concat_rows([job.prepared.cond for job in jobs])
    uncond = None if first.uncond is None else concat_rows([job.prepared.uncond for job in jobs])
    codes, images, done = [], [], 0
    for bucket in self.calls(rows):
      n = min(bucket, rows - done)
      take = lambda x: pad_rows(x[done:done + n], bucket)
      keys = jax.random.wrap_key_data(take(key_data))
      call_args = {k: take(v) for k, v in row_args.items()}
      call_settings = settings.replace(**{
          name: take(getattr(settings, name)) for name in ("cfg", "typical_mass", "temperature")
          if getattr(settings, name) is not None})
      compile_key = (jobs[0].group, bucket)
      compiles = compile_key not in self._compiled
      if compiles and len(self._compiled) >= self.max_programs:
        log.warning("%d sampler programs compiled (--max-programs): dropping them from memory",
                    len(self._compiled))
        jax.clear_caches()
        self._compiled.clear()
      start = time.perf_counter()
      out = np.asarray(sample(self.pipe.model, self.pipe.params, map_rows(take, cond), keys,
                              call_settings,
                              uncond=None if uncond is None else map_rows(take, uncond),
                              **kwargs, **call_args))
      sampled = time.perf_counter()
      codes.append(out[:n])
      if self._decoders is not None:
        images.append(self._decoders[bucket].decode(out)[:n])
      if compiles:  # this group's first call at this bucket: compiled its sampler and decode
        self._compiled.add(compile_key)
        self.metrics.record_compile(time.perf_counter() - start)
      if record:
        self.metrics.record_call(n, bucket)
        self.metrics.record_stage("sample", sampled - start)
        self.metrics.record_stage("decode", time.perf_counter() - sampled)
      done += n
    codes = np.concatenate(codes)
    images = np.concatenate(images) if images else None
    outputs, start = [], 0
    for job in jobs:
      end = start + job.rows
      outputs.append((codes[start:end], None if images is None else images[start:end]))
      start = end
    return outputs

  def warm_up(self, prepared: Prepared) -> None:
    """Compiles the sampler for `prepared`'s group at every bucket size (and the decode)."""
    for bucket in self.buckets:
      first_row = lambda cond: None if cond is None else repeat_rows(
          map_rows(lambda a: a[:1], cond), bucket)
      rows = Prepared(first_row(prepared.cond), prepared.labels[:1] * bucket,
                      prepared.seed, prepared.settings,
                      {k: (np.repeat(v[:1], bucket, 0) if isinstance(v, np.ndarray) else v)
                       for k, v in prepared.inputs.items()}, first_row(prepared.uncond))
      self.sample_jobs([Job(rows, _NoFuture())], record=False)

  def close(self, grace_s: float = 0.0) -> bool:
    """Stops taking calls and waits up to `grace_s` for the running one; False when it is
    still running then (the caller may exit without it)."""
    self._worker.shutdown(wait=False, cancel_futures=True)
    return self._idle.wait(grace_s)


def _bucket_decoders(pipe, sizes: list[int]) -> dict | None:
  """One VQGAN decoder per bucket, each compiled for exactly that many rows (the pipeline's own
  pads every decode to its chunk of rows); None without a VQGAN."""
  if not pipe.has_codec:
    return None
  codec = pipe.codec
  return {size: VQGANCodec(codec.module, codec.params, batch_size=size) for size in sizes}


class _NoFuture:
  """The future of a warm-up job, which nobody awaits."""

  def done(self) -> bool:
    return True


def warm_up_requests(pipe, every_mode: bool) -> list[Prepared]:
  """The prepared requests whose groups are compiled before serving: generation, and with
  `every_mode` inpainting, editing and (where the CLIP has a vision tower) variations of a grey
  image at the model's size."""
  from paella_jax import request
  prepared = [pipe.prepare(request.Generate(prompts=("",)))]
  if every_mode and pipe.has_codec:
    factor = pipe.codec.module.factor
    h, w = (side * factor for side in pipe.latent_shape)
    image = np.full((h, w, 3), 0.5, np.float32)
    prepared += [pipe.prepare(request.Inpaint(image=image, prompts=("",),
                                              box=(0, 0, h // 2, w // 2))),
                 pipe.prepare(request.Edit(image=image, prompts=("",)))]
    try:
      prepared.append(pipe.prepare(request.Vary(image=image)))
    except ValueError:  # no vision tower: the mode answers 400 anyway
      pass
  return prepared
