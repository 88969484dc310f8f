"""ByT5's tokenizer: UTF-8 bytes shifted by three, then end-of-sequence, padded with zeros.

    tokenizer = ByT5Tokenizer(max_length=768)
    ids = tokenizer(["a cat"])          # (1, 6) int32: bytes + 3, then 1 (</s>)

Ids: 0 <pad>, 1 </s>, 2 <unk>, 3..258 the bytes 0..255, 259..383 <extra_id_0>..<extra_id_124>.
The result equals transformers' `ByT5Tokenizer` called with padding="longest", truncation=True
and the same max_length, including its handling of special-token strings written in a prompt:
"<pad>", "</s>" and "<unk>" become their ids and swallow the whitespace around them,
"<extra_id_N>" becomes its id, and a sequence that already ends in </s> gets no second one.
Prompts are checked as the CLIP tokenizer checks them (`paella_jax.tokenizer.check_prompts`:
valid UTF-8 text), and a call that cuts prompts logs one warning naming the length and the limit.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from paella_jax.tokenizer import check_prompts, warn_cut

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
OFFSET = 3  # ids before the first byte
NUM_EXTRA_IDS = 125
VOCAB_SIZE = OFFSET + 256 + NUM_EXTRA_IDS  # 384
# Special tokens that strip the whitespace on both sides of them (Hugging Face's AddedToken
# lstrip/rstrip), and their ids.
_STRIPPING = {"<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID}
_EXTRA = {f"<extra_id_{i}>": OFFSET + 256 + i for i in range(NUM_EXTRA_IDS)}
_SPECIAL = re.compile("(" + "|".join(re.escape(t) for t in [*_STRIPPING, *_EXTRA]) + ")")


def _encode(text: str) -> list[int]:
  """Ids of one prompt, special-token strings included, before truncation and </s>."""
  pieces = _SPECIAL.split(text)  # text, special, text, ..., text
  for i in range(1, len(pieces), 2):
    if pieces[i] in _STRIPPING:
      pieces[i - 1] = pieces[i - 1].rstrip()
      pieces[i + 1] = pieces[i + 1].lstrip()
  ids = []
  for i, piece in enumerate(pieces):
    if i % 2:
      ids.append(_STRIPPING.get(piece, _EXTRA.get(piece)))
    else:
      ids.extend(b + OFFSET for b in piece.encode("utf-8"))
  return ids


class ByT5Tokenizer:
  """Prompts -> (B, L) int32 ids padded with 0 to the longest (at most `max_length`).

  Each row is the prompt's ids truncated to max_length - 1, then </s> unless the row already
  ends with it. The attention mask of a batch is `ids != PAD_ID` (the byte 0 is id 3).
  """

  pad_token_id, eos_token_id, unk_token_id, vocab_size = PAD_ID, EOS_ID, UNK_ID, VOCAB_SIZE

  def __init__(self, max_length: int = 768):
    if max_length < 1:
      raise ValueError(f"max_length must leave room for </s>, got {max_length}")
    self.max_length = max_length

  def __call__(self, texts: str | Sequence[str], max_length: int | None = None,
               pad_to_multiple_of: int | None = None, warn_truncated: bool = True) -> np.ndarray:
    """(B, L) int32 ids; L is the longest row, rounded up to `pad_to_multiple_of` if given.
    With `warn_truncated`, a call that cuts prompts to max_length logs one warning."""
    texts = check_prompts(texts)
    max_length = self.max_length if max_length is None else max_length
    if max_length < 1:
      raise ValueError(f"max_length must leave room for </s>, got {max_length}")
    full = [ids if ids and ids[-1] == EOS_ID else ids + [EOS_ID] for ids in map(_encode, texts)]
    if warn_truncated:
      warn_cut(texts, [len(ids) for ids in full], max_length, "tokens (UTF-8 bytes and </s>)",
               "ByT5")
    rows = []
    for ids in full:
      ids = ids[:max_length - 1]
      rows.append(ids if ids and ids[-1] == EOS_ID else ids + [EOS_ID])
    length = max((len(r) for r in rows), default=0)
    if pad_to_multiple_of:
      length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    out = np.full((len(rows), length), PAD_ID, np.int32)
    for i, row in enumerate(rows):
      out[i, :len(row)] = row
    return out

  def to_config(self) -> dict[str, int]:
    return {"max_length": self.max_length}
