"""Training: the jit-compiled step (step.py) and the loop around it (loop.py)."""
