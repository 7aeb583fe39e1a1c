"""Benchmarks that print figures (no test asserts them): ``partkd bench data | train | kd``.

- :mod:`partkd.bench.data`: synthetic generation, shard writing, read + transform (samples/s per core);
- :mod:`partkd.bench.train`: teacher and student KD training steps (samples/s; ``python -m partkd.bench``);
- :mod:`partkd.bench.kd`: the synthetic benchmark, the pipeline over seeds (mean ± std, paired gains).
"""

# ``partkd.bench`` was the training-step benchmark's module until 0.2: its names, deprecated, are removed in 0.3.0.
_MOVED = {"BenchShape", "run_train_bench", "format_rows", "main"}


def __getattr__(name: str):
    if name in _MOVED:
        import warnings

        from partkd.bench import train

        warnings.warn(f"partkd.bench.{name} moved to partkd.bench.train.{name} (the alias is removed in 0.3.0)",
                      DeprecationWarning, stacklevel=2)
        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
