"""Data: sources of pre-encoded (VQ tokens, CLIP embedding) pairs and batch iterators."""
