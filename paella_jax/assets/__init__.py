"""Package data: the CLIP BPE vocabulary (see README.md in this folder)."""
