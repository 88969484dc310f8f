"""The server's counters, as GET /metrics answers them."""

from __future__ import annotations

import collections

import numpy as np

LATENCY_WINDOW = 1000  # latencies of the last this many answered requests give p50 and p99


class Metrics:
  """Requests by answer status, sampler calls with their batch sizes, compiles, latencies, and
  the seconds spent in each stage of serving (see `record_stage`)."""

  def __init__(self):
    self.requests = 0
    self.statuses: collections.Counter = collections.Counter()
    self.sampler_calls = 0
    self.batch_sizes: collections.Counter = collections.Counter()  # rows per call -> calls
    self.buckets: collections.Counter = collections.Counter()      # padded size -> calls
    self.compiles = 0
    self.compile_s = 0.0          # seconds of the calls that compiled, start-up included
    self.startup_compile_s = 0.0  # of those, the ones before the server listened
    self.stage_s: collections.Counter = collections.Counter()      # stage -> seconds, in total
    self._latencies: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)

  def record_call(self, rows: int, bucket: int) -> None:
    self.sampler_calls += 1
    self.batch_sizes[rows] += 1
    self.buckets[bucket] += 1

  def record_compile(self, seconds: float) -> None:
    """A sampler call that compiled its program (first of its group and bucket): its seconds,
    which a warm compilation cache makes short."""
    self.compiles += 1
    self.compile_s += seconds

  def record_stage(self, stage: str, seconds: float) -> None:
    """Time spent in a stage: per request "prepare" (JSON, arguments, text and image encoding)
    and "respond" (PNGs, sidecars); per sampler call "sample" and "decode" (the VQGAN)."""
    self.stage_s[stage] += seconds

  def record_request(self, status: int, seconds: float) -> None:
    self.requests += 1
    self.statuses[status] += 1
    if status == 200:
      self._latencies.append(seconds * 1e3)

  def to_dict(self, queue: int) -> dict:
    """JSON-ready: requests, statuses, sampler_calls, batch_sizes, buckets, latency_ms (p50,
    p99 of the last answered requests), compiles with compile_s (seconds of the calls that
    compiled) and startup_compile_s (of those, before serving), queue (jobs waiting for a call),
    stage_ms (milliseconds spent in each stage so far, in total)."""
    latencies = np.asarray(self._latencies, np.float64)
    percentile = lambda q: float(np.percentile(latencies, q)) if len(latencies) else None
    return dict(requests=self.requests, statuses={str(k): v for k, v in sorted(self.statuses.items())},
                sampler_calls=self.sampler_calls,
                batch_sizes={str(k): v for k, v in sorted(self.batch_sizes.items())},
                buckets={str(k): v for k, v in sorted(self.buckets.items())},
                latency_ms=dict(p50=percentile(50), p99=percentile(99), count=len(latencies)),
                compiles=self.compiles, compile_s=round(self.compile_s, 3),
                startup_compile_s=round(self.startup_compile_s, 3), queue=queue,
                stage_ms={k: 1e3 * v for k, v in sorted(self.stage_s.items())})
