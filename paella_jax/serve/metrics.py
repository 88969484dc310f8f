"""The server's counters, as GET /metrics answers them."""

from __future__ import annotations

import collections

import numpy as np

LATENCY_WINDOW = 1000  # latencies of the last this many answered requests give p50 and p99


class Metrics:
  """Requests by answer status, sampler calls with their batch sizes, compiles, latencies."""

  def __init__(self):
    self.requests = 0
    self.statuses: collections.Counter = collections.Counter()
    self.sampler_calls = 0
    self.batch_sizes: collections.Counter = collections.Counter()  # rows per call -> calls
    self.buckets: collections.Counter = collections.Counter()      # padded size -> calls
    self.compiles = 0
    self._latencies: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)

  def record_call(self, rows: int, bucket: int) -> None:
    self.sampler_calls += 1
    self.batch_sizes[rows] += 1
    self.buckets[bucket] += 1

  def record_request(self, status: int, seconds: float) -> None:
    self.requests += 1
    self.statuses[status] += 1
    if status == 200:
      self._latencies.append(seconds * 1e3)

  def to_dict(self, queue: int) -> dict:
    """JSON-ready: requests, statuses, sampler_calls, batch_sizes, buckets, latency_ms (p50,
    p99 of the last answered requests), compiles, queue (jobs waiting for a sampler call)."""
    latencies = np.asarray(self._latencies, np.float64)
    percentile = lambda q: float(np.percentile(latencies, q)) if len(latencies) else None
    return dict(requests=self.requests, statuses={str(k): v for k, v in sorted(self.statuses.items())},
                sampler_calls=self.sampler_calls,
                batch_sizes={str(k): v for k, v in sorted(self.batch_sizes.items())},
                buckets={str(k): v for k, v in sorted(self.buckets.items())},
                latency_ms=dict(p50=percentile(50), p99=percentile(99), count=len(latencies)),
                compiles=self.compiles, queue=queue)
