"""Figures shared by the callbacks and reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

from lit_defense.evaluation import WORST, RobustnessResult, eps_key  # noqa: E402
from lit_defense.stats import Estimate  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def robust_accuracy_figure(results: Mapping[str, RobustnessResult], title: str = "robust accuracy") -> Figure:
    """Robust accuracy vs eps.

    One line per attack (dashed) and the worst case (solid, thick), for every model in ``results``.
    """
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (model, result) in enumerate(results.items()):
        color = colors[i % len(colors)]
        eps = [0.0, *result.eps]
        for name in [*result.attacks, WORST]:
            acc = [result.clean_accuracy, *(result.robust_accuracy[name][eps_key(e)] for e in result.eps)]
            worst = name == WORST
            label = f"{model}: {name}" if len(results) > 1 else name
            line = ax.plot(eps, acc, marker="o", color=color if len(results) > 1 else None,
                           linestyle="-" if worst else "--", linewidth=2.5 if worst else 1.0,
                           alpha=1.0 if worst else 0.7, label=label)[0]
            if worst:  # the worst case's exact 95% interval as a band
                bounds = [Estimate.of(a, result.num_samples).ci for a in acc]
                ax.fill_between(eps, [lo for lo, _ in bounds], [hi for _, hi in bounds], color=line.get_color(),
                                alpha=0.15, linewidth=0, label=f"{label}: 95% interval")
    ax.set_xlabel(f"eps ({next(iter(results.values())).norm})" if results else "eps")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
