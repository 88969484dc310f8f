"""The offline ByT5 tokenizer against transformers' ByT5Tokenizer (it needs no vocabulary file)."""

import numpy as np
import pytest
import transformers

from paella_jax.byt5_tokenizer import EOS_ID, PAD_ID, VOCAB_SIZE, ByT5Tokenizer

PROMPTS = [
    "a cat",
    "",
    "An oil painting of a lighthouse at dusk, dramatic sky",
    "héllo wörld — naïve café 🐱🚀 日本語のテキスト",
    "tabs\tand\nnewlines  and trailing spaces   ",
    "nul \x00 byte and \x7f",
    "x </s>  y",
    "a <pad> b <unk>",
    "a <extra_id_0> b<extra_id_124> <extra_id_125>",
    "ends with </s>",
    " </s> ",
    "a</s></s> b",
]


@pytest.fixture(scope="module")
def reference():
  return transformers.ByT5Tokenizer()


def hf_ids(reference, texts, max_length):
  return reference(texts, padding="longest", truncation=True, max_length=max_length,
                   return_tensors="np").input_ids


@pytest.mark.parametrize("max_length", [768, 24, 7, 2, 1])
def test_matches_transformers(reference, max_length):
  ours = ByT5Tokenizer(max_length=max_length)
  for text in PROMPTS:  # one at a time: no padding
    expected = hf_ids(reference, [text], max_length)
    np.testing.assert_array_equal(ours([text]), expected, err_msg=repr(text))
  batch = ours(PROMPTS)
  assert batch.dtype == np.int32
  np.testing.assert_array_equal(batch, hf_ids(reference, PROMPTS, max_length))
  assert batch.shape[1] <= max_length
  if max_length % 8 == 0:  # transformers refuses other combinations
    np.testing.assert_array_equal(
        ours(PROMPTS, pad_to_multiple_of=8),
        reference(PROMPTS, padding="longest", truncation=True, max_length=max_length,
                  pad_to_multiple_of=8, return_tensors="np").input_ids)


def test_bytes_and_padding():
  ids = ByT5Tokenizer()(["ab", "é", ""])
  # "é" is two UTF-8 bytes (0xc3 0xa9); every byte is shifted by three.
  np.testing.assert_array_equal(ids, [[97 + 3, 98 + 3, EOS_ID],
                                      [0xc3 + 3, 0xa9 + 3, EOS_ID],
                                      [EOS_ID, PAD_ID, PAD_ID]])
  assert VOCAB_SIZE == 384 and int(ByT5Tokenizer()(["\xff" * 10]).max()) < VOCAB_SIZE
  long = ByT5Tokenizer(max_length=768)(["z" * 2000])
  assert long.shape == (1, 768) and long[0, -1] == EOS_ID and (long[0, :-1] == ord("z") + 3).all()
  padded = ByT5Tokenizer()(["abc"], pad_to_multiple_of=8)
  np.testing.assert_array_equal(padded, [[100, 101, 102, EOS_ID, 0, 0, 0, 0]])
  np.testing.assert_array_equal(ByT5Tokenizer()("abc"), ByT5Tokenizer()(["abc"]))


def test_bad_inputs():
  with pytest.raises(TypeError, match="strings"):
    ByT5Tokenizer()([b"bytes"])
  with pytest.raises(ValueError, match="max_length"):
    ByT5Tokenizer(max_length=0)
