"""The grain loader over prepared records: contents, global shuffle, per-process shards, exact
resume (also with worker processes), record format."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from tests.data_fixtures import write_synthetic_records
from paella_jax.data.loader import RecordBatcher
from paella_jax.data.records import RecordFormat, read_manifest

N = 64  # sizes (20, 13, 0, 31): an empty shard included


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("records"))
  return out, *write_synthetic_records(out)


def _ids(batch):
  return batch["clip"][:, 0].astype(int).tolist()


def test_record_format_roundtrip():
  fmt = RecordFormat.for_codebook((2, 3), 4, 8192)
  tokens, clip = np.arange(6).reshape(2, 3) * 1000, np.linspace(-1, 1, 4)
  record = fmt.encode(tokens, clip, "un café")
  out = fmt.decode(record)
  assert out["tokens"].dtype == np.int32 and out["clip"].dtype == np.float32
  np.testing.assert_array_equal(out["tokens"], tokens)
  np.testing.assert_allclose(out["clip"], clip, rtol=1e-6)
  assert fmt.caption(record) == "un café"
  assert RecordFormat.for_codebook((2, 3), 4, 65536).token_dtype == "int32"
  with pytest.raises(ValueError, match="shorter"):
    fmt.decode(record[:10])


def test_batches_match_records_and_shuffle_globally(records):
  out, tokens, clip = records
  batches = RecordBatcher(out, batch_size=8, seed=1)
  assert batches.manifest["num_records"] == N
  seen = []
  for _ in range(N // 8):
    batch = next(batches)
    assert batch["tokens"].shape == (8, 4, 4) and batch["clip"].shape == (8, 8)
    ids = _ids(batch)
    np.testing.assert_array_equal(batch["tokens"], tokens[ids])
    seen += ids
  assert sorted(seen) == list(range(N))          # one epoch: every record once
  assert seen != sorted(seen)                      # shuffled ...
  assert len({i // 20 for i in seen[:8]}) > 1      # ... across shards
  second = [i for _ in range(N // 8) for i in _ids(next(batches))]
  assert sorted(second) == list(range(N)) and second != seen  # a new order each epoch
  assert _ids(next(RecordBatcher(out, 8, seed=1))) == seen[:8]
  assert _ids(next(RecordBatcher(out, 8, seed=2))) != seen[:8]


def test_resume_continues_with_the_next_batch(records):
  out = records[0]
  batches = RecordBatcher(out, batch_size=8, seed=3)
  for _ in range(11):                              # into the second epoch
    next(batches)
  state = json.loads(json.dumps(batches.state()))  # what the checkpoint stores
  expected = [_ids(next(batches)) for _ in range(4)]
  resumed = RecordBatcher(out, batch_size=8, seed=3, state=state)
  assert [_ids(next(resumed)) for _ in range(4)] == expected


def test_processes_get_disjoint_shares(records):
  out = records[0]
  shares = [RecordBatcher(out, batch_size=8, seed=0, rows=slice(p * 4, p * 4 + 4))
            for p in range(2)]
  ids = [[i for _ in range(N // 8) for i in _ids(next(b))] for b in shares]
  assert all(len(x) == N // 2 for x in ids)
  assert not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == list(range(N))
  with pytest.raises(ValueError, match="evenly"):
    RecordBatcher(out, batch_size=8, rows=slice(0, 3))


def test_check_and_errors(records, tmp_path):
  batches = RecordBatcher(records[0], batch_size=8)
  batches.check((4, 4), 64, 8)
  with pytest.raises(ValueError, match="latents"):
    batches.check((8, 8), 64, 8)
  with pytest.raises(ValueError, match="CLIP"):
    batches.check((4, 4), 64, 16)
  with pytest.raises(FileNotFoundError, match="manifest.json"):
    read_manifest(str(tmp_path))
  with pytest.raises(ValueError, match="grain"):
    RecordBatcher(records[0], batch_size=8, state={"epoch": 0, "position": 0})


WORKER_SCRIPT = textwrap.dedent("""
  import json, sys
  sys.path[:0] = sys.argv[3:4]
  from paella_jax.data.loader import RecordBatcher

  def ids(b):
    return b["clip"][:, 0].astype(int).tolist()

  if __name__ == "__main__":
    out, workers = sys.argv[1], int(sys.argv[2])
    batches = RecordBatcher(out, batch_size=8, seed=5, workers=workers)
    first = [ids(next(batches)) for _ in range(5)]
    state = batches.state()
    rest = [ids(next(batches)) for _ in range(3)]
    resumed = RecordBatcher(out, batch_size=8, seed=5, workers=workers, state=state)
    print(json.dumps({"first": first, "rest": rest,
                      "resumed": [ids(next(resumed)) for _ in range(3)]}))
""")


def test_worker_processes_resume_exactly(records, tmp_path):
  """Two grain worker processes (in a subprocess: grain's workers need a __main__ guard)."""
  script = tmp_path / "workers.py"
  script.write_text(WORKER_SCRIPT)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, str(script), records[0], "2", root],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  got = json.loads(run.stdout.strip().splitlines()[-1])
  assert got["resumed"] == got["rest"]
  seen = [i for batch in got["first"] + got["rest"] for i in batch]
  assert sorted(seen) == list(range(N))  # the first epoch: every record once


@pytest.mark.slow
def test_training_resumes_with_the_next_record_batch(tmp_path):
  """data.source "records" in the training loop: the grain state in the Orbax checkpoint makes
  a stopped-and-resumed run identical to a straight one (about 2 minutes on 2 loaded cores)."""
  from configs import tiny
  from paella_jax.training.loop import train
  data = str(tmp_path / "records")
  write_synthetic_records(data, sizes=(40, 24), latent=(8, 8), c_clip=32)

  def config(steps):
    c = tiny.get_config()
    c.train.update(total_steps=steps, batch_size=8, log_every=2, checkpoint_every=2,
                   warmup_steps=2)
    c.data.update(source="records", path=data)
    return c
  straight = train(config(6), str(tmp_path / "a"), progress=False)
  train(config(2), str(tmp_path / "b"), progress=False)
  resumed = train(config(6), str(tmp_path / "b"), progress=False)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
