"""The command lines (`paella-sample`, `paella-train`, ...): argument parsing and output files
over the library; `sample.py` and `train.py` at the repository root call them."""
