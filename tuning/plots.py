"""The search as Optuna sees it, drawn with Optuna's matplotlib plots: optimisation history and parameter importance.

The study is rebuilt from the Tune trials (their settings and last validation top-1), so the plots come out the same
for a resumed study as for one that ran in one go.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a study runs headless (a cluster job)

import optuna  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402


def optuna_study(trials: list[dict], space: dict, metric: str) -> optuna.Study:
    """An Optuna study of the trials that reported ``metric`` (errored trials without a result are left out)."""
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        if trial["state"] == "errored" or not math.isfinite(trial[metric]):
            continue
        study.add_trial(optuna.trial.create_trial(params={k: trial[k] for k in space}, distributions=space,
                                                  value=trial[metric]))
    return study


def log_search_plots(trials: list[dict], space: dict, metric: str, out: Path) -> list[Path]:
    """``optimization_history.png`` and, with two trials or more, ``param_importances.png`` in ``out``."""
    from optuna.visualization import matplotlib as optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna_study(trials, space, metric)
    plots = [("optimization_history", optuna_plots.plot_optimization_history)]
    if len(study.trials) >= 2:
        plots.append(("param_importances", optuna_plots.plot_param_importances))
    written = []
    for name, plot in plots:
        axes = plot(study, target_name=metric)
        path = out / f"{name}.png"
        axes.figure.tight_layout()
        axes.figure.savefig(path, dpi=120)
        plt.close(axes.figure)
        written.append(path)
    return written
