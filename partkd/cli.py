"""``partkd`` command line: data tools, benchmarks and the demo. Library functions return values; this prints them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from partkd.cli_data import register as register_data_commands
from partkd.data.noise import NOISE_PROFILES


def _progress(label: str, done: int, total: int, start: float) -> None:
    """One status line, rewritten in place on a terminal; every 20% as its own line in a log."""
    rate = done / max(time.perf_counter() - start, 1e-9)
    line = f"{label}: {done}/{total} samples ({rate:,.0f}/s)"
    if sys.stderr.isatty():
        print(line, end="\n" if done == total else "\r", file=sys.stderr, flush=True)
    elif done == total or done * 5 // total != (done - 1) * 5 // total:
        print(line, file=sys.stderr, flush=True)


def synthesize(out: Path, cfg, overwrite: bool, rows_per_shard: int = 1024, quiet: bool = False) -> dict:
    from partkd.data.shards import DatasetWriter
    from partkd.data.synth import HQ_LAYOUT, LQ_LAYOUT, class_names, generate

    start, step = time.perf_counter(), max(cfg.samples // 20, 1)
    info = {"generator": "partkd.data.synth", **cfg.__dict__, "simulated_lq": True}
    with DatasetWriter(out, name=f"synth-{cfg.seed}", class_names=class_names(cfg), hq_layout=HQ_LAYOUT,
                       lq_layout=LQ_LAYOUT, rows_per_shard=rows_per_shard, overwrite=overwrite, info=info) as writer:
        for i, sample in enumerate(generate(cfg), start=1):
            writer.write(sample)
            if not quiet and (i % step == 0 or i == cfg.samples):
                _progress("synth", i, cfg.samples, start)
    return writer.summary


def format_info(info: dict, path: str | Path) -> str:
    """Human summary of ``dataset.json``."""
    counts = info["counts"]
    size = sum((Path(path) / s["file"]).stat().st_size for s in info["shards"] if (Path(path) / s["file"]).exists())
    lines = [
        f"dataset      {info['name']}  ({path})",
        f"layouts      hq={info['hq_layout']}  lq={info['lq_layout']}",
        f"samples      {counts['samples']}  paired={counts['paired']}  solitary={counts['solitary']}  "
        f"hq-only={counts['hq_only']}",
        f"shards       {len(info['shards'])}  ({size / 1e6:.1f} MB)   fingerprint {info['fingerprint'][:16]}",
        f"complete     {info.get('complete', False)}",
    ]
    if info.get("info"):
        lines.append("made by      " + ", ".join(f"{k}={v}" for k, v in info["info"].items()))
    header = f"{'class':<28}{'all':>6}"
    columns = [counts["per_class"]]
    for protocol, parts in info["splits"].items():
        for split in ("train", "test"):
            header += f"{protocol + '/' + split:>13}"
            columns.append(parts[split]["per_class"])
    lines += ["", header]
    for k, name in enumerate(info["class_names"]):
        lines.append(f"{name[:27]:<28}" + f"{columns[0][k]:>6}" + "".join(f"{c[k]:>13}" for c in columns[1:]))
    totals = f"{'total':<28}{counts['samples']:>6}"
    for parts in info["splits"].values():
        totals += "".join(f"{parts[s]['samples']:>13}" for s in ("train", "test"))
    lines.append(totals)
    return "\n".join(lines)


def format_report(report) -> str:
    if report.ok:
        return f"OK: {report.path}: {report.samples} samples in {report.shards} shards passed every check"
    lines = [f"FAILED: {report.path}: {len(report.problems)} problem(s)"]
    lines += [f"  {p}" for p in report.problems[:50]]
    if len(report.problems) > 50:
        lines.append(f"  ... and {len(report.problems) - 50} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- commands


def cmd_synth(args) -> int:
    from partkd.data.synth import SynthConfig

    cfg = SynthConfig(samples=args.samples, classes=args.classes, seed=args.seed, frames=args.frames,
                      paired_fraction=args.paired_fraction, noise=args.noise, two_person=args.two_person)
    info = synthesize(Path(args.out), cfg, args.overwrite, args.rows_per_shard)
    print(format_info(info, args.out))
    return 0


def cmd_info(args) -> int:
    from partkd.data.shards import load_info

    print(format_info(load_info(args.dir), args.dir))
    return 0


def cmd_validate(args) -> int:
    from partkd.data.validate import validate_dataset

    report = validate_dataset(args.dir)
    print(format_report(report))
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    from partkd.data.synth import SynthConfig
    from partkd.data.validate import validate_dataset

    out = Path(args.out)
    cfg = (SynthConfig(samples=64, classes=10, frames=48, seed=args.seed) if args.smoke_test
           else SynthConfig(samples=2000, classes=16, frames=100, seed=args.seed))
    print(f"[1/3] generating {cfg.samples} synthetic paired skeletons into {out} "
          f"(HQ ntu25 3D, LQ coco17 2D, noise {cfg.noise})", flush=True)
    synthesize(out / "data", cfg, overwrite=True)
    print("[2/3] validating the shards", flush=True)
    report = validate_dataset(out / "data")
    print(format_report(report))
    if not report.ok:
        return 1
    print("[3/3] summary\n", flush=True)
    from partkd.data.shards import load_info

    print(format_info(load_info(out / "data"), out / "data"))
    return 0


def cmd_bench_data(args) -> int:
    from partkd.data.bench import run_data_bench

    print(f"data benchmark: {args.samples} samples, T={args.frames}, M=2, single process "
          f"(median of {args.repeats})", flush=True)
    for row in run_data_bench(samples=args.samples, frames=args.frames, repeats=args.repeats):
        print(f"  {row['stage']:<42} {row['samples_per_s']:>10,.0f} samples/s per core")
    return 0


def cmd_bench_train(args) -> int:
    from partkd.bench import main as train_bench

    train_bench(args.extra)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="partkd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create, inspect and check skeleton datasets").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("synth", help="generate a synthetic paired HQ/LQ dataset")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--classes", type=int, default=16, help="number of action classes (the generator has 16, "
                                                            "18 with --two-person)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=300, help="nominal sequence length T; samples last 60-100%% of it")
    p.add_argument("--paired-fraction", type=float, default=0.8, help="share of samples that keep their HQ side")
    p.add_argument("--noise", default="fast-estimator", choices=sorted(NOISE_PROFILES),
                   help="estimator noise profile of the LQ side")
    p.add_argument("--two-person", action="store_true", help="include the two-person classes")
    p.add_argument("--rows-per-shard", type=int, default=1024)
    p.add_argument("--overwrite", action="store_true", help="replace the shards of an existing dataset in --out")
    p.set_defaults(func=cmd_synth)
    register_data_commands(data)  # convert, degrade, show: partkd/cli_data.py
    p = data.add_parser("info", help="print a dataset's summary")
    p.add_argument("dir")
    p.set_defaults(func=cmd_info)
    p = data.add_parser("validate", help="check schema, layouts, shapes, values, labels, checksums, duplicates")
    p.add_argument("dir")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("demo", help="run the demo pipeline end to end on synthetic data")
    p.add_argument("--out", default="runs/demo", help="working directory of the demo (its data is replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke-test", action="store_true", help="the same stages on a tiny dataset")
    p.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks that print figures").add_subparsers(
        dest="bench_command", required=True)
    p = bench.add_parser("data", help="synthetic generation, shard writing, read + transform (samples/s per core)")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=cmd_bench_data)
    p = bench.add_parser("train", help="teacher and student KD training steps (samples/s); "
                                       "options: --shapes cpu,ntu,tiny --dtypes fp32,bf16 --steps --warmup --device",
                         add_help=False)
    p.set_defaults(func=cmd_bench_train, passthrough=True)  # its options go to partkd.bench
    return parser


def main(argv: list[str] | None = None) -> int:
    from partkd.data.schema import ShardError
    from partkd.layouts import UnknownNameError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return args.func(args)
    except (ShardError, FileExistsError, UnknownNameError, ValueError) as err:
        print(f"partkd: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
