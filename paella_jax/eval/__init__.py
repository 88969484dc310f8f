"""Evaluation: the demo's prompt-adherence analyser."""
