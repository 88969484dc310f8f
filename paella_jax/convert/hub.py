"""Weights from the Hugging Face Hub for the converters: `--from-hub REPO [FILE]`.

    python -m paella_jax.convert paella-v3 --from-hub dome272/Paella paella_v3.pt OUT  # a file
    python -m paella_jax.convert t5 --from-hub google/byt5-xl OUT                      # a repo

With FILE, that file of the repo (`hf_hub_download`) takes the place of the converter's source
file; without, the repo as a directory (`snapshot_download`) takes the place of its source
directory: its .json, .txt and .model files and one format of weights, .safetensors if it has
them, else .bin (not open_clip's own files, nor TensorFlow or Flax weights). Both go through the
Hugging Face cache (HF_HOME,
HF_HUB_CACHE): what is cached is not downloaded again, and with HF_HUB_OFFLINE=1 nothing is
downloaded. huggingface_hub is imported only when the flag is used.
"""

from __future__ import annotations

import os

from paella_jax.cli import one_line

DIRECTORY_FILES = ["*.json", "*.txt", "*.model"]  # configs and tokenizer files
WEIGHTS = (".safetensors", ".bin")                # in order of preference
NOT_DIRECTORY_FILES = ["open_clip_*"]              # open_clip's files: converted from FILE


def fetch(repo: str, filename: str | None = None) -> str:
  """The local path of `filename` in the Hub model repo `repo`, or of the repo as a directory
  when `filename` is None, from the Hugging Face cache (downloaded into it unless offline).

  Raises FileNotFoundError (not cached while offline, no such repo or file) or OSError (the Hub
  refused or could not be reached) in one line naming the repo and file and the command that
  downloads them.
  """
  import huggingface_hub
  from huggingface_hub import constants, errors
  what = f"{repo} {filename}" if filename else repo
  download = f"download it with `hf download {what}` (where the Hub can be reached)"
  try:
    if filename:
      return huggingface_hub.hf_hub_download(repo, filename)
    for suffix in WEIGHTS:
      directory = huggingface_hub.snapshot_download(
          repo, allow_patterns=[*DIRECTORY_FILES, f"*{suffix}"],
          ignore_patterns=NOT_DIRECTORY_FILES)
      if _holds(directory, suffix):
        break
    return directory
  except errors.HFValidationError as e:
    raise ValueError(f"--from-hub {what}: {repo!r} is not a Hub repo id "
                     f"({one_line(e):.200})") from e
  except errors.RepositoryNotFoundError as e:  # also gated or private without a token
    raise FileNotFoundError(f"--from-hub {what}: the Hub has no repo {repo} this machine may "
                            f"read ({one_line(e):.200})") from e
  except errors.RemoteEntryNotFoundError as e:
    raise FileNotFoundError(f"--from-hub {what}: the repo {repo} has no file {filename}") from e
  except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
    offline = " and HF_HUB_OFFLINE=1 turns downloads off" if constants.HF_HUB_OFFLINE else ""
    raise FileNotFoundError(f"--from-hub {what}: not in the Hugging Face cache "
                            f"({constants.HF_HUB_CACHE}){offline}; {download}") from e
  except errors.HfHubHTTPError as e:
    raise OSError(f"--from-hub {what}: the Hub refused ({one_line(e):.200}); {download}") from e


def _holds(directory: str, suffix: str) -> bool:
  """Whether a file below `directory` (not one of open_clip's) ends with `suffix`."""
  return any(name.endswith(suffix) and not name.startswith("open_clip_")
             for _, _, names in os.walk(directory) for name in names)
