"""The offline CLIP tokenizer against transformers' own CLIPTokenizer and known CLIP token ids."""

import json

import numpy as np
import pytest

from paella_jax.tokenizer import CONTEXT_LENGTH, ClipTokenizer, clip_vocabulary

PROMPTS = [
    "a photo of a cat",
    "A PHOTO of a Dog!!!",
    "",
    "   ",
    "an astronaut riding a horse, trending on artstation, 4k, highly detailed",
    "Ünïcödé: naïve café, straße, Ελληνικά, 日本語のテキスト, 🐱🚀",
    "punctuation... (brackets) [more] {braces} 'quotes' \"double\" it's we're I'll",
    "tabs\tand\nnewlines   and  spaces",
    "numbers 12345 and 3.14159 and 1,000,000",
    "&amp; <html> tags </html> @user #hashtag",
    "long " * 100,
    " ".join(f"word{i}" for i in range(200)),
]


@pytest.fixture(scope="module")
def tokenizer():
  return ClipTokenizer()


@pytest.fixture(scope="module")
def hf_tokenizers(tmp_path_factory):
  """transformers' CLIPTokenizer loaded the way it loads a Hugging Face CLIP repository (vocab.json
  and merges.txt files), with OpenAI's pad token and with open_clip's."""
  from transformers import CLIPTokenizer
  vocab, merges = clip_vocabulary()
  out = {}
  for pad in ("<|endoftext|>", "!"):
    directory = tmp_path_factory.mktemp("hf_tokenizer")
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    out[pad] = CLIPTokenizer.from_pretrained(str(directory), pad_token=pad)
  return out


def test_vocabulary_is_clips():
  vocab, merges = clip_vocabulary()
  assert len(vocab) == 49408 and len(merges) == 48894
  assert vocab["!"] == 0 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
  assert vocab["a</w>"] == 320 and vocab["cat</w>"] == 2368


@pytest.mark.parametrize("prompt, ids", [
    ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
    ("a photo of a dog", [49406, 320, 1125, 539, 320, 1929, 49407]),
    ("", [49406, 49407]),
])
def test_known_ids(tokenizer, prompt, ids):
  out = tokenizer([prompt])
  np.testing.assert_array_equal(out[0, :len(ids)], ids)
  assert (out[0, len(ids):] == 0).all()  # open_clip pads with id 0


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_matches_transformers(tokenizer, hf_tokenizers, pad):
  ours = ClipTokenizer(pad_token=pad)(PROMPTS)
  theirs = hf_tokenizers[pad](PROMPTS, padding="max_length", truncation=True,
                              max_length=CONTEXT_LENGTH, return_tensors="np")["input_ids"]
  np.testing.assert_array_equal(ours, theirs)


def test_shape_dtype_and_truncation(tokenizer):
  out = tokenizer(PROMPTS)
  assert out.shape == (len(PROMPTS), CONTEXT_LENGTH) and out.dtype == np.int32
  assert (out[:, 0] == 49406).all()
  # Every row has exactly one end-of-text token, kept last when the prompt is truncated.
  assert ((out == 49407).sum(axis=1) == 1).all()
  assert out[-1, -1] == 49407 and out[-2, -1] == 49407
  # argmax pooling (open_clip, Paella v1) finds the end-of-text token.
  np.testing.assert_array_equal(out.argmax(axis=1), (out == 49407).argmax(axis=1))


def test_single_string_and_empty_list(tokenizer):
  np.testing.assert_array_equal(tokenizer("a cat"), tokenizer(["a cat"]))
  assert tokenizer([]).shape == (0, CONTEXT_LENGTH)


def test_custom_length():
  out = ClipTokenizer(max_length=8)(["one two three four five six seven eight nine"])
  assert out.shape == (1, 8) and out[0, -1] == 49407


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["ok", 5], [["nested"]], np.zeros(3)])
def test_rejects_non_strings(tokenizer, bad):
  with pytest.raises(TypeError, match="strings"):
    tokenizer(bad)


def test_rejects_bad_pad_token():
  with pytest.raises(ValueError, match="vocabulary"):
    ClipTokenizer(pad_token="<pad>")
