"""``python -m partkd.bench``: the training-step benchmark (as ``partkd bench train``)."""

from partkd.bench.train import main

main()
