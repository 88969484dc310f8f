"""`python -m paella_jax.convert ... --from-hub REPO [FILE]` from a Hugging Face cache laid out
here by hand (HF_HUB_OFFLINE=1, the Hub endpoint pointed at a closed local port: no network)."""

import hashlib
import os

from huggingface_hub import constants as hub_constants
import numpy as np
import pytest
import torch

from paella_jax.checkpoint import load_model, read_model_description
from paella_jax.cli import run_main
from paella_jax.commands.convert import main
from tests.conftest import FIXTURES

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  """An empty offline Hugging Face cache; huggingface_hub reads its settings at import, so its
  constants are set too."""
  cache = tmp_path / "hf" / "hub"
  cache.mkdir(parents=True)
  for name, value in (("HF_HOME", tmp_path / "hf"), ("HF_HUB_CACHE", cache),
                      ("HF_HUB_OFFLINE", "1")):
    monkeypatch.setenv(name, str(value))
  monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
  return cache


def cache_repo(cache, repo: str, files: dict) -> None:
  """Lays out `repo` as huggingface_hub caches it: refs/main naming a commit, snapshots/COMMIT/
  holding links to blobs/ named by content; `files` maps a path in the repo to a local file."""
  root = cache / f"models--{repo.replace('/', '--')}"
  (root / "refs").mkdir(parents=True)
  (root / "refs" / "main").write_text(COMMIT)
  (root / "blobs").mkdir()
  for name, source in files.items():
    data = open(source, "rb").read()
    blob = root / "blobs" / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    link = root / "snapshots" / COMMIT / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def assert_same_model(a, b):
  kind_a, config_a, params_a = load_model(a)
  kind_b, config_b, params_b = load_model(b)
  assert (kind_a, config_a) == (kind_b, config_b)
  np.testing.assert_equal(params_a, params_b)
  assert read_model_description(a)["weights_sha256"] == read_model_description(b)["weights_sha256"]


def test_file_from_the_cache_converts_like_the_file(hub_cache, tmp_path):
  local = tmp_path / "paella_v3.pt"
  torch.save(torch.load(FIXTURES / "paella_v3_tiny.pt", weights_only=True), local)
  cache_repo(hub_cache, "dome272/Paella", {"paella_v3.pt": local})
  nhead = ["--nhead", "-1", "4", "4"]
  run_main(main, ["paella-v3", "--from-hub", "dome272/Paella", "paella_v3.pt",
                  str(tmp_path / "hub"), *nhead])
  run_main(main, ["paella-v3", str(local), str(tmp_path / "direct"), *nhead])
  assert_same_model(tmp_path / "hub", tmp_path / "direct")
  source = read_model_description(tmp_path / "hub")["meta"]["source"]
  assert source.startswith(str(hub_cache)) and source.endswith(f"{COMMIT}/paella_v3.pt")


def test_repo_from_the_cache_converts_like_the_directory(hub_cache, tmp_path):
  from tests.test_t5 import random_model
  directory = tmp_path / "byt5_tiny"
  random_model().save_pretrained(directory)
  cache_repo(hub_cache, "google/byt5-tiny", {p.name: p for p in directory.iterdir()})
  run_main(main, ["t5", "--from-hub=google/byt5-tiny", str(tmp_path / "hub"),
                  "--max-length", "300"])
  run_main(main, ["t5", str(directory), str(tmp_path / "direct"), "--max-length", "300"])
  assert_same_model(tmp_path / "hub", tmp_path / "direct")


@pytest.mark.parametrize("argv, expected", [
    (["paella-v3", "--from-hub", "dome272/Paella", "missing.pt"],
     "--from-hub dome272/Paella missing.pt: not in the Hugging Face cache"),
    (["vqgan", "--from-hub", "nobody/nothing", "vqgan_f4.pt"],
     "--from-hub nobody/nothing vqgan_f4.pt: not in the Hugging Face cache"),
    (["t5", "--from-hub", "google/byt5-xl"], "--from-hub google/byt5-xl: not in the Hugging Face"),
    (["paella-v3", "--from-hub", "not a repo id", "paella_v3.pt"], "is not a Hub repo id"),
])
def test_missing_repo_or_file_is_one_line(argv, expected, hub_cache, tmp_path, capsys):
  cache_repo(hub_cache, "dome272/Paella", {"paella_v3.pt": FIXTURES / "paella_v3_tiny.pt"})
  before = sorted(p for p in tmp_path.rglob("*"))
  with pytest.raises(SystemExit) as exit_info:
    run_main(main, [*argv, str(tmp_path / "out")])
  assert exit_info.value.code == 2
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("error: --from-hub ") and expected in line, line
  if "repo id" not in expected:
    assert f"HF_HUB_OFFLINE=1 turns downloads off; download it with `hf download " \
           f"{' '.join(argv[2:])}`" in line, line
  assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written
