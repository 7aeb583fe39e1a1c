"""``partkd bench data | train | kd``: benchmarks that print figures."""

from __future__ import annotations

import re
from pathlib import Path

from partkd.cli.progress import say
from partkd.cli.train import backend_option


def cmd_bench_data(args) -> int:
    from partkd.bench.data import run_data_bench

    say(f"data benchmark: {args.samples} samples, T={args.frames}, M=2, single process (median of {args.repeats})")
    for row in run_data_bench(samples=args.samples, frames=args.frames, repeats=args.repeats):
        print(f"  {row['stage']:<42} {row['samples_per_s']:>10,.0f} samples/s per core")
    return 0


def cmd_bench_train(args) -> int:
    from partkd.bench.train import main as train_bench

    train_bench(args.extra)
    return 0


def cmd_bench_kd(args) -> int:
    from partkd.bench.kd import check_kd_bench, run_kd_bench, synthetic_dataset
    from partkd.train.pipeline import preset_job

    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    objectives = tuple(o.strip() for o in args.objectives.split(","))
    variants = parse_variants(args.variant)
    sets = list(args.set or [])
    # refused before any dataset is made or job run
    check_kd_bench(preset_job(args.preset, Path(args.data or out), out / "ray", seeds[0], out.name, sets), objectives,
                   args.view, args.schedule, variants)
    if args.data:  # one given dataset: the seeds vary training and occlusion masks, not the data
        if args.paired_fraction is not None:
            raise ValueError("--paired-fraction makes synthetic datasets; with --data, degrade the dataset instead "
                             "(partkd data degrade --paired-fraction)")
        datasets = {seed: Path(args.data) for seed in seeds}
    else:
        paired = 1.0 if args.paired_fraction is None else args.paired_fraction
        datasets = {seed: synthetic_dataset(out, args.preset, seed, paired, say) for seed in seeds}
    run_kd_bench(out, datasets, objectives, args.preset, sets, say=say, view=args.view, backend=args.backend,
                 schedule=args.schedule, variants=variants)
    print(f"results: {out / 'results.md'}  (per seed: {out / 'results.csv'})")
    return 0


def parse_variants(entries: list[str] | None) -> dict[str, list[str]]:
    """``NAME:section.key=value,section.key=value`` -> {NAME: [settings]}."""
    variants = {}
    for entry in entries or []:
        name, sep, sets = entry.partition(":")
        if not sep or not name or not sets:
            raise ValueError(f"--variant {entry!r}: expected NAME:section.key=value[,section.key=value...]")
        # a comma starts a new setting only before "section.key=": list values (train.milestones=14,18) stay whole
        variants[name] = [item for item in re.split(r",(?=[\w.]+=)", sets) if item]
    return variants


def register(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print figures").add_subparsers(
        dest="bench_command", required=True)
    p = bench.add_parser("data", help="synthetic generation, shard writing, read + transform (samples/s per core)")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=cmd_bench_data)
    p = bench.add_parser("train", help="the training path's throughput (samples/s): steps, inference, E, data path; "
                                       "options: --shapes cpu,ntu,tiny --dtypes bf16,fp32 --compile off,on --steps "
                                       "--warmup --device --no-data-path --data-cpus --json FILE", add_help=False)
    p.set_defaults(func=cmd_bench_train, passthrough=True)  # its options go to partkd.bench.train
    p = bench.add_parser("kd", help="teacher and students over seeds (synthetic or --data), the paper's protocol by "
                                    "default: mean +- std at each OP, KD's paired gain with its 95%% CI and wins")
    p.add_argument("--out", default="runs/bench-kd", help="working directory (datasets, checkpoints, results)")
    p.add_argument("--seeds", default="1,2,3,4,5", help="each seed draws its own dataset, training run and masks "
                                                          "(at least 5 for a useful 95 %% interval)")
    p.add_argument("--objectives", default="ce,kl,global_msc,pmsc", help="student objectives (ce = without KD)")
    p.add_argument("--paired-fraction", type=float, help="share of synthetic samples with an HQ side (default 1)")
    p.add_argument("--data", help="an existing dataset (e.g. converted + degraded) instead of synthetic ones")
    p.add_argument("--preset", choices=("full", "smoke"), default="full")
    p.add_argument("--view", choices=("paper", "robustness"), default="paper",
                   help="paper (default): one student per objective and OP, trained at the OP it is tested at; "
                        "robustness: one student per objective trained at data.occlusion_prob, tested at every OP")
    p.add_argument("--schedule", choices=("preset", "epochs", "auto"), default="preset",
                   help="preset (default): the preset's epochs, lr and width; epochs: as many as a pilot teacher "
                        "needs until its top-1 on a validation slice of the training split stops rising; auto: the "
                        "lr and width too, from short probe teachers on the same slice (never the test split)")
    p.add_argument("--variant", action="append", metavar="NAME:SETTINGS",
                   help="settings for students listed as objective:NAME in --objectives, e.g. --variant "
                        "tuned:loss.alpha=4.23,loss.w=0.81,loss.tau=0.26 --objectives ce,pmsc,pmsc:tuned")
    p.add_argument("--set", action="append", help="override a setting, e.g. --set loss.alpha=2")
    backend_option(p)
    p.set_defaults(func=cmd_bench_kd)
