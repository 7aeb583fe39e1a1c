"""``partkd train teacher|student``, ``partkd part-matrix``, ``partkd evaluate``: one job, E, one evaluation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from partkd.cli.progress import say


def _job_from_args(args, extra_sets: list[str] = ()):
    from partkd.train.config import load_config

    sets = list(extra_sets)
    if getattr(args, "data", None):
        sets.append(f"data.path={args.data}")
    return load_config(file=args.config, sets=sets + list(args.set or []))


def cmd_train(args) -> int:
    from partkd.train.evaluate import part_matrix_for_job
    from partkd.train.jobs import train_student, train_teacher
    from partkd.train.objectives import get_objective

    extra = []
    if args.role == "student":
        extra += [f"teacher_checkpoint={args.teacher}"] if args.teacher else []
        extra += [f"part_matrix={args.part_matrix}"] if args.part_matrix else []
    job = _job_from_args(args, extra)
    if args.role == "student" and get_objective(job.loss.objective).needs_part_matrix and not job.part_matrix \
            and job.teacher_checkpoint:  # E of the teacher on this job's training rows (never its validation slice)
        matrix = part_matrix_for_job(job.teacher_checkpoint, job)
        say(f"part matrix: {matrix}")
        job = replace(job, part_matrix=str(matrix))
    result = (train_teacher if args.role == "teacher" else train_student)(job, say, backend=args.backend)
    print(f"checkpoint   {result.checkpoint}\nmlflow run   {result.run_id}")
    print("metrics      " + "  ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))
    return 0


def _data_settings(args, checkpoint: str):
    """The checkpoint's data settings, with --data/--protocol/--frames/--persons/--seed where given."""
    from partkd.train.checkpoint import load_meta

    data = load_meta(checkpoint).data
    given = {"path": args.data, "protocol": args.protocol, "frames": args.frames, "persons": args.persons,
             "seed": args.seed}
    data = replace(data, **{k: v for k, v in given.items() if v is not None})
    if not data.path:
        raise ValueError(f"{checkpoint} does not say which dataset it was trained on: give --data")
    return data


def cmd_part_matrix(args) -> int:
    from partkd.train.evaluate import part_matrix_for_teacher

    path = part_matrix_for_teacher(args.teacher, _data_settings(args, args.teacher), args.grouping,
                                   temperature=args.temperature, device=args.device, overwrite=args.overwrite)
    print(f"E: {path}  heatmap: {path.removesuffix('.npy')}.png")
    return 0


def cmd_evaluate(args) -> int:
    from partkd.train.checkpoint import load_meta
    from partkd.train.evaluate import evaluate_checkpoint, plot_confusion

    probs = tuple(float(p) for p in args.ops.split(","))
    data = _data_settings(args, args.checkpoint)
    print(f"{args.checkpoint} on {data.path}: {data.protocol} test split, T={data.frames}, M={data.persons}, "
          f"occlusion masks of seed {data.seed}")
    results = evaluate_checkpoint(args.checkpoint, data, probs, device=args.device)
    class_names = load_meta(args.checkpoint).model.class_names
    print(f"{'OP':>4} {'top-1':>8} {'top-5':>8} {'samples':>8}")
    for ev in results:
        print(f"{ev.occlusion_prob:>4.1f} {100 * ev.top1:>7.2f}% {100 * ev.top5:>7.2f}% {ev.samples:>8}")
    print(f"\nper-class top-1 at OP {results[0].occlusion_prob:.1f}:")
    for name, acc in zip(class_names, results[0].per_class):
        print(f"  {name[:30]:<30} {100 * acc:6.1f}%")
    if args.confusion:
        plot_confusion(results[0].confusion, list(class_names), Path(args.confusion))
        print(f"confusion matrix: {args.confusion}")
    return 0


def _data_options(p) -> None:
    p.add_argument("--data", help="dataset directory (default: the one the checkpoint was trained on)")
    p.add_argument("--protocol", help="split protocol (default: the checkpoint's)")
    p.add_argument("--frames", type=int, help="T (default: the checkpoint's)")
    p.add_argument("--persons", type=int, help="M (default: the checkpoint's)")
    p.add_argument("--seed", type=int, help="occlusion masks, the same for every model (default: the checkpoint's)")


def backend_option(p, default: str = "ray") -> None:
    p.add_argument("--backend", default=default, help=f"ray: Ray Train jobs, DDP over train.num_workers, data through "
                   "Ray Data; local: the same loop in this process without Ray, one worker (debugging, a quick check "
                   f"on a laptop); default {default}")


def register(commands) -> None:
    """Add ``train``, ``part-matrix`` and ``evaluate`` to the ``partkd`` subparsers."""
    train = commands.add_parser("train", help="Ray Train jobs").add_subparsers(dest="role", required=True)
    for role, text in (("teacher", "the teacher on HQ skeletons (Eq. 2)"),
                       ("student", "the student on LQ skeletons, L_c + alpha L_kd (Eq. 4)")):
        p = train.add_parser(role, help=text)
        p.add_argument("--data", help="dataset directory (same as --set data.path=...)")
        p.add_argument("--config", help="TOML/YAML file of overrides")
        p.add_argument("--set", action="append", help="section.key=value, e.g. train.epochs=5 (repeatable)")
        if role == "student":
            p.add_argument("--teacher", help="teacher checkpoint directory")
            p.add_argument("--part-matrix", help="E as .npy (computed from the teacher and cached if not given)")
        backend_option(p)
        p.set_defaults(func=cmd_train)

    p = commands.add_parser("part-matrix", help="E from a teacher's part-occlusion tests on the HQ training split")
    p.add_argument("--teacher", required=True)
    _data_options(p)
    p.add_argument("--grouping", default="paper5")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--overwrite", action="store_true", help="recompute even if cached beside the checkpoint")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is a GPU)")
    p.set_defaults(func=cmd_part_matrix)

    p = commands.add_parser("evaluate", help="top-1/top-5, per-class accuracy and confusion on the test split at OPs")
    p.add_argument("checkpoint")
    _data_options(p)
    p.add_argument("--ops", default="0,0.3,0.6", help="occlusion probabilities")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is a GPU)")
    p.add_argument("--confusion", help="write the OP-0 confusion matrix PNG here")
    p.set_defaults(func=cmd_evaluate)
