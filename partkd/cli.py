"""``partkd`` command line: data tools, benchmarks and the demo. Library functions return values; this prints them."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from partkd.cli_data import register as register_data_commands
from partkd.data.noise import NOISE_PROFILES

if TYPE_CHECKING:
    from partkd.train.config import JobConfig


def _progress(label: str, done: int, total: int, start: float) -> None:
    """One status line, rewritten in place on a terminal; every 20% as its own line in a log."""
    rate = done / max(time.perf_counter() - start, 1e-9)
    line = f"{label}: {done}/{total} samples ({rate:,.0f}/s)"
    if sys.stderr.isatty():
        print(line, end="\n" if done == total else "\r", file=sys.stderr, flush=True)
    elif done == total or done * 5 // total != (done - 1) * 5 // total:
        print(line, file=sys.stderr, flush=True)


def synth_info(cfg) -> dict:
    """What ``dataset.json`` records of a synthetic dataset's making (its generator settings)."""
    return {"generator": "partkd.data.synth", **cfg.__dict__, "simulated_lq": True}


def synthesize(out: Path, cfg, overwrite: bool, rows_per_shard: int = 1024, quiet: bool = False) -> dict:
    from partkd.data.shards import DatasetWriter
    from partkd.data.synth import HQ_LAYOUT, LQ_LAYOUT, class_names, generate

    start, step = time.perf_counter(), max(cfg.samples // 20, 1)
    info = synth_info(cfg)
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
        lines.append("made by")
        lines += [f"  {k:<22} {str(v) if len(str(v)) <= 90 else str(v)[:87] + '...'}" for k, v in info["info"].items()]
    header = f"{'class':<28}{'all':>6}"
    columns = [counts["per_class"]]
    for protocol, parts in info["splits"].items():
        for split in ("train", "test"):
            header += f" {protocol + '/' + split:>14}"
            columns.append(parts[split]["per_class"])
    lines += ["", header]
    for k, name in enumerate(info["class_names"]):
        lines.append(f"{name[:27]:<28}" + f"{columns[0][k]:>6}" + "".join(f" {c[k]:>14}" for c in columns[1:]))
    totals = f"{'total':<28}{counts['samples']:>6}"
    for parts in info["splits"].values():
        totals += "".join(f" {parts[s]['samples']:>14}" for s in ("train", "test"))
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


def _job_from_args(args, extra_sets: list[str] = ()) -> JobConfig:
    from partkd.train.config import load_config

    sets = list(extra_sets)
    if getattr(args, "data", None):
        sets.append(f"data.path={args.data}")
    return load_config(file=args.config, sets=sets + list(args.set or []))


def cmd_train(args) -> int:
    from partkd.train.jobs import train_student, train_teacher

    extra = []
    if args.role == "student":
        if args.teacher:
            extra.append(f"teacher_checkpoint={args.teacher}")
        if args.part_matrix:
            extra.append(f"part_matrix={args.part_matrix}")
    job = _job_from_args(args, extra)
    if args.role == "student" and job.loss.objective == "pmsc" and not job.part_matrix and job.teacher_checkpoint:
        from dataclasses import replace

        from partkd.train.evaluate import part_matrix_for_teacher

        matrix = part_matrix_for_teacher(job.teacher_checkpoint, job.data.path, job.data.protocol, job.loss.grouping,
                                         frames=job.data.frames, persons=job.data.persons)
        print(f"part matrix: {matrix}", flush=True)
        job = replace(job, part_matrix=str(matrix))
    result = (train_teacher if args.role == "teacher" else train_student)(job)
    print(f"checkpoint   {result.checkpoint}\nmlflow run   {result.run_id}")
    print("metrics      " + "  ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))
    return 0


def _data_defaults(args, checkpoint: str) -> dict:
    """--data/--protocol/--frames/--persons/--seed as given, else as the checkpoint was trained (else the paper's)."""
    from partkd.train.common import load_meta

    trained = load_meta(checkpoint).get("data", {})
    paper = {"path": None, "protocol": "xsub", "frames": 300, "persons": 2, "seed": 0, "occlusion_unit": "joint-frame"}
    out = {k: trained.get(k, v) for k, v in paper.items()}
    out.update({k: getattr(args, k) for k in ("protocol", "frames", "persons", "seed")
                if getattr(args, k, None) is not None})
    out["path"] = args.data or out["path"]
    if not out["path"]:
        raise ValueError(f"{checkpoint} does not say which dataset it was trained on: give --data")
    return out


def cmd_part_matrix(args) -> int:
    from partkd.train.evaluate import part_matrix_for_teacher

    d = _data_defaults(args, args.teacher)
    path = part_matrix_for_teacher(args.teacher, d["path"], d["protocol"], args.grouping, frames=d["frames"],
                                   persons=d["persons"], temperature=args.temperature, overwrite=args.overwrite)
    print(f"E: {path}  heatmap: {path.with_suffix('.png')}")
    return 0


def cmd_evaluate(args) -> int:
    from partkd.train.common import load_meta
    from partkd.train.evaluate import evaluate_checkpoint, plot_confusion

    probs = tuple(float(p) for p in args.ops.split(","))
    d = _data_defaults(args, args.checkpoint)
    print(f"{args.checkpoint} on {d['path']}: {d['protocol']} test split, T={d['frames']}, M={d['persons']}, "
          f"occlusion masks of seed {d['seed']}")
    results = evaluate_checkpoint(args.checkpoint, d["path"], d["protocol"], probs, frames=d["frames"],
                                  persons=d["persons"], seed=d["seed"], occlusion_unit=d["occlusion_unit"],
                                  device=args.device)
    meta = load_meta(args.checkpoint)
    print(f"{'OP':>4} {'top-1':>8} {'top-5':>8} {'samples':>8}")
    for ev in results:
        print(f"{ev.occlusion_prob:>4.1f} {100 * ev.top1:>7.2f}% {100 * ev.top5:>7.2f}% {ev.samples:>8}")
    print(f"\nper-class top-1 at OP {results[0].occlusion_prob:.1f}:")
    for name, acc in zip(meta["class_names"], results[0].per_class):
        print(f"  {name[:30]:<30} {100 * acc:6.1f}%")
    if args.confusion:
        plot_confusion(results[0].confusion, meta["class_names"], Path(args.confusion))
        print(f"confusion matrix: {args.confusion}")
    return 0


def cmd_demo(args) -> int:
    from partkd.data.validate import validate_dataset
    from partkd.train.pipeline import preset_job, preset_synth, run_pipeline

    out = Path(args.out)
    preset = "smoke" if args.smoke_test else "full"
    cfg = preset_synth(preset, args.seed)
    start = time.perf_counter()
    print(f"[data] {cfg.samples} synthetic skeletons, {cfg.classes} classes, T<={cfg.frames}, "
          f"{cfg.paired_fraction:.0%} paired (HQ ntu25 3D, LQ coco17 2D, noise {cfg.noise}) -> {out / 'data'}",
          flush=True)
    synthesize(out / "data", cfg, overwrite=True)
    report = validate_dataset(out / "data")
    print(format_report(report), flush=True)
    if not report.ok:
        return 1
    name = f"demo-seed{args.seed}" + ("-smoke" if args.smoke_test else "")
    shutil.rmtree(out / "ray" / name, ignore_errors=True)  # a demo starts over: its models are replaced with its data
    for stale in (out / "ray").glob(f"{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    job = preset_job(preset, out / "data", out / "ray", args.seed, name, list(args.set or []))
    result = run_pipeline(job, say=lambda line: print(line, flush=True))
    print("\n" + result.markdown)
    (out / "results.md").write_text(result.markdown)
    print(f"results: {out / 'results.md'}   MLflow parent run {result.run_id} ({job.tracking_uri or 'mlflow.db'})")
    print(f"demo wall time: {time.perf_counter() - start:.0f} s")
    return 0


def cmd_bench_kd(args) -> int:
    from partkd.train.study import run_kd_study

    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    objectives = tuple(o.strip() for o in args.objectives.split(","))
    if args.data:  # one given dataset: the seeds vary training and occlusion masks, not the data
        if args.paired_fraction is not None:
            raise ValueError("--paired-fraction makes synthetic datasets; with --data, degrade the dataset instead "
                             "(partkd data degrade --paired-fraction)")
        datasets = {seed: Path(args.data) for seed in seeds}
    else:
        paired = 1.0 if args.paired_fraction is None else args.paired_fraction
        datasets = {seed: _study_dataset(out, args.preset, seed, paired) for seed in seeds}
    run_kd_study(out, datasets, objectives, args.preset, list(args.set or []), say=lambda line: print(line, flush=True))
    print(f"results: {out / 'results.md'}  (per seed: {out / 'results.csv'})")
    return 0


def _study_dataset(out: Path, preset: str, seed: int, paired_fraction: float) -> Path:
    """The preset's synthetic dataset of ``seed``, generated unless an identical one is already there."""
    from partkd.data.shards import load_info
    from partkd.train.pipeline import preset_synth

    cfg = preset_synth(preset, seed, paired_fraction)
    path = out / f"data-seed{seed}"
    try:
        reuse = load_info(path).get("info", {}) == synth_info(cfg)
    except (FileNotFoundError, ValueError):
        reuse = False
    if not reuse:
        print(f"[data] seed {seed}: {cfg.samples} samples, {cfg.paired_fraction:.0%} paired -> {path}", flush=True)
        synthesize(path, cfg, overwrite=True)
    return path


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


def _data_options(p) -> None:
    p.add_argument("--data", help="dataset directory (default: the one the checkpoint was trained on)")
    p.add_argument("--protocol", help="split protocol (default: the checkpoint's)")
    p.add_argument("--frames", type=int, help="T (default: the checkpoint's)")
    p.add_argument("--persons", type=int, help="M (default: the checkpoint's)")
    p.add_argument("--seed", type=int, help="occlusion masks, the same for every model (default: the checkpoint's)")


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

    p = sub.add_parser("demo", help="synthetic data -> teacher -> E -> students without and with KD -> Table 1")
    p.add_argument("--out", default="runs/demo", help="working directory of the demo (its data is replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke-test", action="store_true", help="the same stages on a tiny dataset (about a minute)")
    p.add_argument("--set", action="append", help="override a setting, e.g. --set train.epochs=20")
    p.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="Ray Train jobs").add_subparsers(dest="role", required=True)
    for role, text in (("teacher", "the teacher on HQ skeletons (Eq. 2)"),
                       ("student", "the student on LQ skeletons, L_c + alpha L_kd (Eq. 4)")):
        p = train.add_parser(role, help=text)
        p.add_argument("--data", help="dataset directory (same as --set data.path=...)")
        p.add_argument("--config", help="TOML/YAML file of overrides")
        p.add_argument("--set", action="append", help="section.key=value, e.g. train.epochs=5 (repeatable)")
        if role == "student":
            p.add_argument("--teacher", help="teacher checkpoint directory")
            p.add_argument("--part-matrix", help="E as .npy (computed from the teacher and cached if not given)")
        p.set_defaults(func=cmd_train)

    p = sub.add_parser("part-matrix", help="E from a teacher's part-occlusion tests on the HQ training split")
    p.add_argument("--teacher", required=True)
    _data_options(p)
    p.add_argument("--grouping", default="paper5")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--overwrite", action="store_true", help="recompute even if cached beside the checkpoint")
    p.set_defaults(func=cmd_part_matrix)

    p = sub.add_parser("evaluate", help="top-1/top-5, per-class accuracy and confusion on the test split at OPs")
    p.add_argument("checkpoint")
    _data_options(p)
    p.add_argument("--ops", default="0,0.3,0.6", help="occlusion probabilities")
    p.add_argument("--device", default="cpu", help="e.g. cuda")
    p.add_argument("--confusion", help="write the OP-0 confusion matrix PNG here")
    p.set_defaults(func=cmd_evaluate)

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
    p = bench.add_parser("kd", help="the synthetic benchmark: teacher and students over seeds, mean +- std at each OP")
    p.add_argument("--out", default="runs/bench-kd", help="working directory (datasets, checkpoints, results)")
    p.add_argument("--seeds", default="1,2,3", help="each seed draws its own dataset, training run and masks")
    p.add_argument("--objectives", default="ce,kl,global_msc,pmsc", help="student objectives (ce = without KD)")
    p.add_argument("--paired-fraction", type=float, help="share of synthetic samples with an HQ side (default 1)")
    p.add_argument("--data", help="an existing dataset (e.g. converted + degraded) instead of synthetic ones")
    p.add_argument("--preset", choices=("full", "smoke"), default="full")
    p.add_argument("--set", action="append", help="override a setting, e.g. --set loss.alpha=2")
    p.set_defaults(func=cmd_bench_kd)
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
    except (ShardError, FileExistsError, FileNotFoundError, UnknownNameError, ValueError) as err:
        print(f"partkd: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
