"""``partkd data``: make, convert, degrade, inspect and check skeleton datasets.

:func:`register` adds ``synth``, ``convert``, ``degrade``, ``show``, ``info`` and ``validate`` to the ``partkd``
subparsers. Long work prints progress to stderr (in place on a terminal, every 5% in a log) and its report to stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from partkd.cli.progress import ProgressPrinter
from partkd.data.noise import NOISE_PROFILES
from partkd.layouts import LAYOUTS

FORMATS = ("ntu", "pyskl", "pose-json", "penn", "kinect-v1")
LAYOUTS_2D = sorted(name for name, layout in LAYOUTS.items() if layout.dims == 2)


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


def cmd_synth(args) -> int:
    from partkd.data.synth import SynthConfig, write_synthetic

    cfg = SynthConfig(samples=args.samples, classes=args.classes, seed=args.seed, frames=args.frames,
                      paired_fraction=args.paired_fraction, noise=args.noise, two_person=args.two_person)
    info = write_synthetic(args.out, cfg, overwrite=args.overwrite, rows_per_shard=args.rows_per_shard,
                           progress=ProgressPrinter("synth", min_total=0, unit="samples"))
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


def _class_names(path: str | None) -> list[str] | None:
    from partkd.data.convert.common import read_class_names

    return None if path is None else read_class_names(path)


def cmd_convert(args) -> int:
    from partkd.data.convert import CONVERTERS, WriteOptions

    write = WriteOptions(overwrite=args.overwrite, rows_per_shard=args.rows_per_shard, pair_with=args.pair_with,
                         skip_bad=args.skip_bad,
                         progress=None if args.quiet else ProgressPrinter(f"convert {args.format}"))
    common = {"write": write, **({"name": args.name} if args.name else {})}
    if args.format == "pyskl":
        if len(args.inputs) != 1:
            raise ValueError("pyskl converts one pickle (give a second one to pair with --pair)")
        options = {"side": args.side, "pair": args.pair, "layout": args.layout, "pair_layout": args.pair_layout,
                   "class_names": _class_names(args.class_names), "train_split": args.train_split,
                   "test_split": args.test_split, "max_persons": args.max_persons}
        report = CONVERTERS["pyskl"](args.inputs[0], args.out, **options, **common)
    else:
        options = {"side": args.side}
        if args.format == "ntu":
            options |= {"max_bodies": args.max_bodies, "num_classes": args.classes}
        elif args.format == "pose-json":
            options |= {"labels": args.labels, "class_names": _class_names(args.class_names), "layout": args.layout,
                        "max_persons": args.max_persons, "iou_threshold": args.iou}
        elif args.format == "penn":
            options |= {"invisible_score": args.invisible_score}
        report = CONVERTERS[args.format](args.inputs, args.out, **options, **common)
    print(report.text())
    return 0


def cmd_degrade(args) -> int:
    from partkd.data.degrade import CameraConfig, degrade_dataset

    report = degrade_dataset(
        args.dir, args.out, noise=args.noise, layout=args.layout, paired_fraction=args.paired_fraction,
        seed=args.seed, approximate=not args.no_approximate, mark_missing=args.missing_joints == "mark",
        camera=CameraConfig(max_yaw_deg=args.max_yaw),
        name=args.name, overwrite=args.overwrite, rows_per_shard=args.rows_per_shard,
        progress=None if args.quiet else ProgressPrinter("degrade"),
    )
    print(report.text())
    return 0


def cmd_subset(args) -> int:
    from partkd.data.subset import subset_dataset

    report = subset_dataset(
        args.dir, args.out, protocol=args.protocol, train_per_class=args.train_per_class, seed=args.seed,
        name=args.name, overwrite=args.overwrite, rows_per_shard=args.rows_per_shard,
        progress=None if args.quiet else ProgressPrinter("subset"),
    )
    print(report.text())
    return 0


def cmd_show(args) -> int:
    from partkd.data.show import show_sample

    out = show_sample(args.dir, args.sample, args.out, frames=args.frames, gif=args.gif, fps=args.fps)
    print(out)
    return 0


def _writing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output dataset directory (must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dataset in --out, once the new one is complete (never a folder of other files)")
    p.add_argument("--rows-per-shard", type=int, default=1024)
    p.add_argument("--name", help="dataset name recorded in dataset.json")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _convert_parser(formats, name: str, help: str, *, many: bool = True, side: str = "hq") -> argparse.ArgumentParser:
    p = formats.add_parser(name, help=help, description=help)
    p.add_argument("inputs", nargs="+" if many else 1, metavar="INPUT")
    _writing_options(p)
    p.add_argument("--side", choices=("hq", "lq"), default=side, help=f"which side the data is (default {side})")
    p.add_argument("--pair-with", metavar="DIR", help="an existing dataset whose other side pairs with this one by "
                                                      "sample_id (labels matched by class name)")
    if many:
        p.add_argument("--skip-bad", action="store_true",
                       help="list unreadable files in the report instead of stopping at the first")
    p.set_defaults(func=cmd_convert, format=name, skip_bad=False)
    return p


def _synth_parser(data_subparsers) -> None:
    p = data_subparsers.add_parser("synth", help="generate a synthetic paired HQ/LQ dataset")
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dataset in --out, once the new one is complete (never a folder of other files)")
    p.set_defaults(func=cmd_synth)


def register(commands) -> None:
    """Add the ``data`` command group to the ``partkd`` subparsers."""
    data_subparsers = commands.add_parser("data", help="create, inspect and check skeleton datasets").add_subparsers(
        dest="data_command", required=True)
    _synth_parser(data_subparsers)
    convert = data_subparsers.add_parser(
        "convert", help="convert a real skeleton dataset to Parquet shards",
        description="Convert a real skeleton dataset to partkd Parquet shards (one side; --pair-with pairs it with "
                    "the other side of an existing dataset by sample_id).")
    formats = convert.add_subparsers(dest="format", required=True, metavar="FORMAT")

    p = _convert_parser(formats, "ntu", "NTU RGB+D .skeleton files (folders) -> HQ ntu25 3D")
    p.add_argument("--max-bodies", type=int, default=2, help="bodies kept per sample, the most active first")
    p.add_argument("--classes", type=int, choices=(60, 120), help="NTU-60 or NTU-120 class list (default: 120 if "
                                                                 "an action above A060 is present)")

    p = _convert_parser(formats, "pyskl", "a PYSKL/MMAction2 pickle (+ --pair for the other side)", many=False)
    p.add_argument("--pair", metavar="PICKLE", help="a second pickle as the other side, paired by frame_dir")
    p.add_argument("--layout", choices=sorted(LAYOUTS), help="layout of INPUT (default: from the keypoint shape)")
    p.add_argument("--pair-layout", choices=sorted(LAYOUTS), help="layout of --pair")
    p.add_argument("--class-names", metavar="FILE", help="class names, one per line in label order")
    p.add_argument("--train-split", help="name of the file's split list that is the training set")
    p.add_argument("--test-split", help="name of the file's split list that is the test set")
    p.add_argument("--max-persons", type=int, help="keep the most confident persons (default: all)")

    p = _convert_parser(formats, "pose-json", "OpenPifPaf / OpenPose JSON per video -> LQ 2D with confidences",
                        side="lq")
    p.add_argument("--labels", metavar="CSV", help="video_id,label rows (optional header adds split, subject, "
                                                   "camera, setup, replication); or labels come from --pair-with")
    p.add_argument("--class-names", metavar="FILE", help="class names, one per line in label order")
    p.add_argument("--layout", choices=LAYOUTS_2D, default="coco17", help="output layout (default coco17)")
    p.add_argument("--max-persons", type=int, default=2, help="tracked persons kept per video (default 2)")
    p.add_argument("--iou", type=float, default=0.3, help="box overlap that continues a track (default 0.3)")

    p = _convert_parser(formats, "penn", "Penn Action labels/ folder -> HQ penn13 2D, visibility as score")
    p.add_argument("--invisible-score", type=float, default=0.0,
                   help="score of a joint annotated as invisible; 0 (default) makes it missing, a positive value "
                        "keeps the annotated position")

    _convert_parser(formats, "kinect-v1", "MSR Action3D or UTKinect-Action3D skeleton text -> HQ kinect20 3D")

    p = data_subparsers.add_parser("degrade", help="add a simulated LQ side to an HQ dataset (new directory)")
    p.add_argument("dir", help="the HQ dataset")
    _writing_options(p)
    p.add_argument("--noise", "--profile", dest="noise", default="fast-estimator", choices=sorted(NOISE_PROFILES),
                   help="noise profile (default fast-estimator)")
    p.add_argument("--layout", choices=LAYOUTS_2D, help="LQ layout (default coco17 for 3D HQ, else the HQ layout)")
    p.add_argument("--paired-fraction", type=float, default=1.0, help="share of samples that keep their HQ side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-yaw", type=float, default=45.0, help="3D HQ: largest camera yaw from the recording view, "
                                                               "degrees")
    p.add_argument("--no-approximate", action="store_true",
                   help="refuse target joints the HQ layout lacks instead of approximating the face from the head")
    p.add_argument("--missing-joints", choices=("refuse", "mark"), default="refuse",
                   help="target joints the HQ layout cannot give (penn13 -> coco17: the face): refuse (default) or "
                        "mark them missing in every frame (score 0), as joints the estimator never finds")
    p.set_defaults(func=cmd_degrade)

    p = data_subparsers.add_parser("subset", help="a smaller training split, every other row kept (new directory)")
    p.add_argument("dir", help="the dataset")
    _writing_options(p)
    p.add_argument("--protocol", required=True, help="the protocol whose training split is cut (e.g. official, xsub)")
    p.add_argument("--train-per-class", type=int, required=True, help="training rows kept per class")
    p.add_argument("--seed", type=int, default=0, help="which rows are kept")
    p.set_defaults(func=cmd_subset)

    p = data_subparsers.add_parser("show", help="render one sample's HQ and LQ side by side (PNG strip or GIF)")
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--sample", required=True, metavar="ID", help="sample_id to show")
    p.add_argument("--frames", type=int, default=6, help="frames in the PNG strip (default 6)")
    p.add_argument("--gif", action="store_true", help="write an animated GIF of the whole sequence instead")
    p.add_argument("--fps", type=float, default=10.0, help="GIF frame rate")
    p.add_argument("--out", help="output file (default <sample_id>.png or .gif in the current directory)")
    p.set_defaults(func=cmd_show)

    p = data_subparsers.add_parser("info", help="print a dataset's summary")
    p.add_argument("dir")
    p.set_defaults(func=cmd_info)
    p = data_subparsers.add_parser("validate", help="check schema, layouts, shapes, values, labels, checksums, "
                                                    "duplicates")
    p.add_argument("dir")
    p.set_defaults(func=cmd_validate)
