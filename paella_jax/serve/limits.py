"""What one request may ask of paella-serve: every bound, with its default and its flag.

Each is checked before any work that grows with it (a body before it is parsed, a prompt before
it is tokenized, an image's header before its pixels are decoded, rows and steps before the
request is prepared), and refused with a 4xx naming the field (`serve/requests.py`, `app.py`).
"""

from __future__ import annotations

import dataclasses

MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
  """max_body_bytes: a request body (413; --max-body-mb). max_prompt_bytes: one prompt in UTF-8,
  checked before tokenizing (--max-prompt-bytes). max_steps: sampler steps (--max-steps).
  max_rows: images one request may make, frames x images for interpolation (413; --max-batch).
  max_image_pixels: an uploaded image, read from its header, and an outpainting canvas
  (--max-image-pixels). max_queue: requests in the server at once, being prepared or waiting
  for the sampler; past it 503 with Retry-After (--max-queue). max_programs: sampler programs
  kept compiled; past it the in-memory programs are dropped and come back from the persistent
  compilation cache on their next use (--max-programs)."""
  max_body_bytes: int = 16 * MIB
  max_prompt_bytes: int = 4096
  max_steps: int = 64
  max_rows: int = 16
  max_image_pixels: int = 4096 * 4096
  max_queue: int = 256
  max_programs: int = 64

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field.name} must be an integer >= 1, got {value!r}")
