"""Paella v3 records: bytes per record with ByT5 byte ids vs hidden states, and the FLOPs the
frozen ByT5-XL encoder adds to a train step when it runs there on byte ids.

    python benchmarks/bench_v3_records.py [--records 256 --tokens 32,64,128,256,768]

For each caption length n (ByT5 tokens, </s> included) it writes --records records of the
release's shapes (64x64 int16 tokens, two 1024-d float32 CLIP embeddings, a caption of n - 1
random printable bytes) as an ArrayRecord shard with `paella-prepare`'s writer options, once
with the byte ids and once with ByT5-XL states (n x 2560 bfloat16), and measures the file size
per record. Random token codes and states do not compress; real ones barely do. The encoder's
FLOPs per token come from XLA's cost analysis of the lowered ByT5-XL forward (abstract weights,
nothing is compiled or run). Writes benchmarks/results/v3_records_cpu.{json,csv}.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from common import parse_ints, write_results

from paella_jax.data.records import V3RecordFormat, write_shard

TOKENS, C_CLIP, BYT5_DIM = (64, 64), 1024, 2560


def shard_bytes(fmt: V3RecordFormat, n: int, records: int, rng) -> tuple[int, int]:
  """(bytes of one record, file bytes per record) for captions of n ByT5 tokens."""
  rows = []
  for _ in range(records):
    caption = "".join(map(chr, rng.integers(32, 127, n - 1)))
    byt5 = (np.append(np.frombuffer(caption.encode(), np.uint8) + 3, 1) if fmt.byt5 == "ids"
            else rng.standard_normal((n, BYT5_DIM), dtype=np.float32))
    rows.append(fmt.encode(rng.integers(0, 8192, TOKENS), rng.standard_normal(C_CLIP),
                           rng.standard_normal(C_CLIP), byt5, caption))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "shard.array_record")
    write_shard(path, rows)
    return len(rows[0]), os.path.getsize(path) // records


def byt5_xl_flops_per_token(length: int) -> float:
  """Forward FLOPs of ByT5-XL's encoder per token at `length` tokens (XLA's estimate)."""
  import jax
  import jax.numpy as jnp
  from configs import byt5_xl
  from paella_jax.models.t5 import T5Config, T5Encoder, init_params
  c = byt5_xl.get_config()
  model = T5Encoder(T5Config.from_dict(c.model.to_dict()), dtype=jnp.bfloat16,
                    param_dtype=jnp.bfloat16)
  params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
  lowered = jax.jit(lambda p, i: model.apply({"params": p}, i, attention_mask=i > 0)).lower(
      params, ids)
  return float(lowered.cost_analysis()["flops"]) / length


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--records", type=int, default=256)
  p.add_argument("--tokens", type=parse_ints, default=[32, 64, 128, 256, 768])
  args = p.parse_args()
  rng = np.random.default_rng(0)
  ids = V3RecordFormat(TOKENS, C_CLIP, "int16", "ids")
  states = V3RecordFormat(TOKENS, C_CLIP, "int16", "states", BYT5_DIM)
  rows = []
  for n in args.tokens:
    raw_ids, file_ids = shard_bytes(ids, n, args.records, rng)
    raw_states, file_states = shard_bytes(states, n, max(args.records // 8, 8), rng)
    flops = byt5_xl_flops_per_token(n)
    rows.append(dict(tokens=n, ids_bytes=raw_ids, ids_file_bytes=file_ids,
                     states_bytes=raw_states, states_file_bytes=file_states,
                     byt5_xl_gflop_per_record=flops * n / 1e9))
    print(f"n={n:4d}: ids {raw_ids:,} B ({file_ids:,} on disk), states {raw_states:,} B "
          f"({file_states:,} on disk); ByT5-XL forward {flops * n / 1e9:.0f} GFLOP per record")
  write_results("v3_records", rows)


if __name__ == "__main__":
  main()
