"""``partkd demo``: synthetic data -> teacher -> E -> students without and with KD -> Table 1.

By default under the paper's protocol: at each occlusion probability (OP) a student without KD and one with KD, both
trained on LQ skeletons occluded at that OP and tested at it, paired (same data, masks, initial weights); the table
gives KD's gain at each OP. ``--view robustness`` trains each student once, unoccluded, and tests it at every OP.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from partkd.cli.data import format_report
from partkd.cli.progress import ProgressPrinter, say
from partkd.cli.train import backend_option


def cmd_demo(args) -> int:
    from partkd.data.synth import write_synthetic
    from partkd.data.validate import validate_dataset
    from partkd.train.jobs import check_backend
    from partkd.train.pipeline import check_view, preset_job, preset_synth, run_pipeline

    check_backend(args.backend)  # before the data is replaced
    check_view(args.view)
    out = Path(args.out)
    preset = "smoke" if args.smoke_test else "demo"
    cfg = preset_synth(preset, args.seed)
    start = time.perf_counter()
    say(f"[data] {cfg.samples} synthetic skeletons, {cfg.classes} classes, T<={cfg.frames}, "
        f"{cfg.paired_fraction:.0%} paired (HQ ntu25 3D, LQ coco17 2D, noise {cfg.noise}) -> {out / 'data'}")
    write_synthetic(out / "data", cfg, overwrite=True, progress=ProgressPrinter("synth", min_total=0, unit="samples"))
    report = validate_dataset(out / "data")
    say(format_report(report))
    if not report.ok:
        return 1
    name = f"demo-seed{args.seed}" + ("-smoke" if args.smoke_test else "")
    shutil.rmtree(out / "ray" / name, ignore_errors=True)  # a demo starts over: its models are replaced with its data
    for stale in (out / "ray").glob(f"{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    job = preset_job(preset, out / "data", out / "ray", args.seed, name, list(args.set or []))
    # the paper's protocol by default: a student per (objective, OP), trained at the OP it is tested at
    result = run_pipeline(job, say=say, backend=args.backend, view=args.view)
    print("\n" + result.markdown)
    (out / "results.md").write_text(result.markdown)
    print(f"results: {out / 'results.md'}   MLflow parent run {result.run_id} ({job.tracking_uri or 'mlflow.db'})")
    print(f"demo wall time: {time.perf_counter() - start:.0f} s")
    return 0


def register(commands) -> None:
    p = commands.add_parser("demo", help="synthetic data -> teacher -> E -> students without and with KD -> Table 1")
    p.add_argument("--out", default="runs/demo", help="working directory of the demo (its data is replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke-test", action="store_true", help="the same stages on a tiny dataset (about a minute)")
    p.add_argument("--set", action="append", help="override a setting, e.g. --set train.epochs=20")
    p.add_argument("--view", default="paper",
                   help="paper (default): a student per OP, trained at the OP it is tested at, with and without KD; "
                        "robustness: each student trained once, unoccluded, and tested at every OP")
    # in this process by default: on a laptop's CPU each Ray Train job spends ~30 s starting its controller, workers
    # and data actors, and the demo trains seven
    backend_option(p, default="local")
    p.set_defaults(func=cmd_demo)
