"""Evaluation: paella-eval (commands/eval.py over run.py) computes zero-shot FID (fid.py, with the FID
Inception of models/inception.py), CLIP score (clip_score.py) on COCO captions or the demo's
prompts (data.py), and the demo's prompt adherence (adherence.py)."""
