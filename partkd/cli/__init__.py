"""``partkd`` command line: one module per command group. Library functions return values; the commands print them.

- ``partkd data ...`` (:mod:`partkd.cli.data`): synth, convert, degrade, show, info, validate;
- ``partkd demo`` (:mod:`partkd.cli.demo`);
- ``partkd train ...``, ``partkd part-matrix``, ``partkd evaluate`` (:mod:`partkd.cli.train`);
- ``partkd bench ...`` (:mod:`partkd.cli.bench`).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from partkd.cli import bench, data, demo, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="partkd", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (data, demo, train, bench):
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from partkd.data.schema import ShardError
    from partkd.layouts import UnknownNameError
    from partkd.storage import StorageError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return args.func(args)
    except (ShardError, StorageError, FileExistsError, FileNotFoundError, UnknownNameError, ValueError) as err:
        if args.debug:
            raise
        print(f"partkd: error: {err}", file=sys.stderr)
        return 2


def synthesize(out, cfg, overwrite: bool, rows_per_shard: int = 1024, quiet: bool = False) -> dict:
    """Deprecated (goes in the next release): :func:`partkd.data.synth.write_synthetic`."""
    from partkd.cli.progress import ProgressPrinter
    from partkd.data.synth import write_synthetic

    warnings.warn("partkd.cli.synthesize is deprecated: use partkd.data.synth.write_synthetic", DeprecationWarning,
                  stacklevel=2)
    progress = None if quiet else ProgressPrinter("synth", min_total=0, unit="samples")
    return write_synthetic(out, cfg, overwrite=overwrite, rows_per_shard=rows_per_shard, progress=progress)
