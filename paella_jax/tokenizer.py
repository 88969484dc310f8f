"""CLIP's text tokenizer, built offline from the BPE vocabulary shipped with the package.

    tokenizer = ClipTokenizer()
    ids = tokenizer(["a photo of a cat"])   # (1, 77) int32: <start> tokens <end> <pad>...

The vocabulary (49,408 tokens) is the one of every CLIP release; it is built from
`assets/bpe_simple_vocab_16e6.txt.gz` exactly as OpenAI's CLIP builds it, and handed to
transformers' `CLIPTokenizer` (which supplies normalisation, pre-tokenisation and BPE).
Sequences longer than `max_length` are truncated and keep their end-of-text token; each call that
cuts a prompt logs one warning (logger "paella_jax.prompts") naming its length and the limit.
Prompts must be valid UTF-8 text (`check_prompts`, shared with the ByT5 tokenizer): a string
holding undecodable bytes (surrogate escapes, e.g. from a command line in another encoding) or
lone surrogates is refused with a ValueError naming the prompt and the character.

Padding: open_clip (and therefore Paella v1) pads with id 0 (the token "!"), Hugging Face's
OpenAI CLIP tokenizer with <|endoftext|> (49407). Pooled CLIP embeddings do not depend on it
(the text transformer is causal and pools at the end-of-text token); per-token hidden states
after the end-of-text token do.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import logging
import os
from typing import Sequence

import numpy as np

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 49,408 tokens in all
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
OPEN_CLIP_PAD = "!"  # id 0
CONTEXT_LENGTH = 77
log = logging.getLogger("paella_jax.prompts")


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
  """A prompt or a sequence of prompts as a list; TypeError for anything but strings,
  ValueError naming the first prompt that is not valid UTF-8 text."""
  prompts = [prompts] if isinstance(prompts, str) else prompts
  if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
    raise TypeError("prompts must be a string or a sequence of strings, got "
                    f"{_describe(prompts)}")
  for i, prompt in enumerate(prompts):
    try:
      prompt.encode("utf-8")
    except UnicodeEncodeError as e:
      code = ord(prompt[e.start])
      what = (f"the byte 0x{code - 0xDC00:02x}, which does not decode as UTF-8"
              if 0xDC80 <= code <= 0xDCFF else f"the lone surrogate U+{code:04X}")
      raise ValueError(f"prompt {i} is not valid UTF-8 text: character {e.start} is {what} "
                       f"({prompt!r:.60}); pass prompts encoded as UTF-8") from None
  return list(prompts)


def warn_cut(prompts: Sequence[str], lengths: Sequence[int], limit: int, unit: str,
             encoder: str) -> None:
  """Logs one warning when some `lengths` (special tokens included) exceed `limit`: the first
  such prompt's length, and how many prompts of the call were cut."""
  cut = [i for i, n in enumerate(lengths) if n > limit]
  if cut:
    first = cut[0]
    others = f"; {len(cut)} of the {len(prompts)} prompts were cut" if len(cut) > 1 else ""
    log.warning("prompt cut to %s's %d %s: it has %d (%.60r...), the rest is ignored%s",
                encoder, limit, unit, lengths[first], prompts[first], others)


def _byte_symbols() -> list[str]:
  """The 256 unicode symbols standing for bytes in byte-level BPE, in vocabulary order.

  Printable latin-1 bytes stand for themselves and come first, in byte order; the remaining 68
  bytes follow, in byte order, mapped to code points 256, 257, ...
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in set(printable)]
  return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


@functools.lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
  """(vocab token -> id, merges in rank order) of CLIP's tokenizer, from the packaged BPE file."""
  data = importlib.resources.files("paella_jax.assets").joinpath(BPE_FILE).read_bytes()
  lines = gzip.decompress(data).decode("utf-8").split("\n")
  merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a header
  symbols = _byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
  tokens += [START_OF_TEXT, END_OF_TEXT]
  return {t: i for i, t in enumerate(tokens)}, merges


class ClipTokenizer:
  """Prompts -> (B, max_length) int32 token ids: <|startoftext|> ... <|endoftext|> then padding.

  Args:
    max_length: tokens per prompt, special tokens included (CLIP: 77).
    pad_token: "!" (id 0, open_clip and Paella v1) or "<|endoftext|>" (id 49407, Hugging Face).
  """

  def __init__(self, max_length: int = CONTEXT_LENGTH, pad_token: str = OPEN_CLIP_PAD):
    # Only the tokenizer is used: without this, importing transformers on a machine without
    # PyTorch advises on every run that its models are unavailable.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import CLIPTokenizer
    vocab, merges = clip_vocabulary()
    if pad_token not in vocab:
      raise ValueError(f"pad_token {pad_token!r} is not in CLIP's vocabulary")
    if max_length < 2:
      raise ValueError(f"max_length must leave room for the two special tokens, got {max_length}")
    self.max_length = max_length
    self.pad_token = pad_token
    self.pad_token_id = vocab[pad_token]
    self.bos_token_id = vocab[START_OF_TEXT]
    self.eos_token_id = vocab[END_OF_TEXT]
    self.vocab_size = len(vocab)
    # transformers 5.x takes the vocabulary itself (`vocab=`, `merges=`); file names go elsewhere.
    self.hf_tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token,
                                      model_max_length=max_length)

  def __call__(self, prompts: str | Sequence[str], warn_truncated: bool = True) -> np.ndarray:
    """Tokenizes a prompt or a list of prompts into a (B, max_length) int32 array; a prompt
    longer than max_length keeps its first max_length - 1 tokens and <|endoftext|>. With
    `warn_truncated`, a call that cuts prompts logs one warning."""
    prompts = check_prompts(prompts)
    out = np.full((len(prompts), self.max_length), self.pad_token_id, np.int32)
    if not prompts:
      return out
    # Untruncated (verbose=False: no advice on lengths), to know what is cut.
    rows = self.hf_tokenizer(prompts, verbose=False, return_attention_mask=False)["input_ids"]
    if warn_truncated:
      warn_cut(prompts, [len(row) for row in rows], self.max_length,
               "tokens (start and end tokens included)", "CLIP")
    for i, row in enumerate(rows):
      row = row if len(row) <= self.max_length else [*row[:self.max_length - 1], self.eos_token_id]
      out[i, :len(row)] = row
    return out

  def to_config(self) -> dict:
    """JSON-able arguments that rebuild this tokenizer: `ClipTokenizer(**config)`."""
    return {"max_length": self.max_length, "pad_token": self.pad_token}


def _describe(prompts) -> str:
  if isinstance(prompts, Sequence):
    bad = next(p for p in prompts if not isinstance(p, str))
    return f"an element of type {type(bad).__name__} ({bad!r:.40})"
  return f"{type(prompts).__name__}"
