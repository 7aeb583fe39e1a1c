"""``partkd`` command line: one module per command group. Library functions return values; the commands print them.

- ``partkd data ...`` (:mod:`partkd.cli.data`): synth, convert, degrade, show, info, validate;
- ``partkd demo`` (:mod:`partkd.cli.demo`);
- ``partkd train ...``, ``partkd part-matrix``, ``partkd evaluate`` (:mod:`partkd.cli.train`);
- ``partkd bench ...`` (:mod:`partkd.cli.bench`);
- ``partkd ui`` (:mod:`partkd.cli.ui`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings

from partkd.cli import bench, data, demo, train, ui


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="partkd", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (data, demo, train, bench, ui):
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
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        code = args.func(args)
        sys.stdout.flush()  # a pipe closed early fails here, not in Python's own flush at exit
        return code
    except BrokenPipeError:  # the reader went away (`partkd data info ... | head`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail
        return 1
    except (ShardError, StorageError, OSError, UnknownNameError, ValueError) as err:  # OSError: a full disk, say
        if args.debug:
            raise
        print(f"partkd: error: {'; '.join([str(err), *getattr(err, '__notes__', ())])}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as err:  # what a writer had finished is kept (DatasetWriter)
        if args.debug:
            raise
        print(f"partkd: {'interrupted' if isinstance(err, KeyboardInterrupt) else 'terminated'}; "
              f"{'; '.join(getattr(err, '__notes__', ())) or 'stopped'}", file=sys.stderr)
        return 130 if isinstance(err, KeyboardInterrupt) else 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM (``kill``, ``ray job stop``, a pod's shutdown), raised where the command is, so that open writers
    close as on Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated()


def synthesize(out, cfg, overwrite: bool, rows_per_shard: int = 1024, quiet: bool = False) -> dict:
    """Deprecated (removed in 0.3.0): :func:`partkd.data.synth.write_synthetic`."""
    from partkd.cli.progress import ProgressPrinter
    from partkd.data.synth import write_synthetic

    warnings.warn("partkd.cli.synthesize is deprecated and removed in 0.3.0: use partkd.data.synth.write_synthetic",
                  DeprecationWarning, stacklevel=2)
    progress = None if quiet else ProgressPrinter("synth", min_total=0, unit="samples")
    return write_synthetic(out, cfg, overwrite=overwrite, rows_per_shard=rows_per_shard, progress=progress)
