"""Figures shared by the callbacks and reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

from lit_defense.data.datasets import class_label  # noqa: E402
from lit_defense.evaluation import WORST, RobustnessResult, eps_key  # noqa: E402
from lit_defense.results import Examples  # noqa: E402
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


def draw_examples(rows: Sequence[tuple[str, Examples, float]], class_names: Sequence[str] = (),
                  perturbation: bool = False) -> Figure:
    """Clean images over their worst-case adversarial versions: the one drawing of ``Examples``.

    ``rows``: (label, examples, eps) per block of rows (a model in a report, an eps in training).
    Each clean image is titled with its class (``class_names`` when given) and each adversarial one
    with the model's prediction, in red when it is wrong; ``perturbation`` adds a row with each
    perturbation, amplified to the full grey range (0.5 is no change).
    """
    rows = [(label, ex.cpu(), e) for label, ex, e in rows if ex is not None and len(ex)]
    per = 3 if perturbation else 2
    k = max((len(ex) for _, ex, _ in rows), default=1)
    n_rows = max(per * len(rows), 1)
    fig, axes = plt.subplots(n_rows, k, figsize=(1.1 * k, 1.25 * n_rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (label, ex, e) in enumerate(rows):
        key = eps_key(e)
        adv, pred = ex.adv[key], ex.pred[key]
        delta = adv - ex.x
        scale = delta.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (delta.dim() - 1))
        images = [(ex.x, [class_label(int(c), class_names) for c in ex.y], f"{label}\nclean"),
                  (adv, [class_label(int(c), class_names) for c in pred], f"adv eps={e:g}")]
        if perturbation:
            images.append((0.5 + 0.5 * delta / scale, ["" for _ in pred], "perturbation\n(amplified)"))
        for offset, (imgs, titles, row_label) in enumerate(images):
            row = per * r + offset
            for i in range(len(ex)):
                ax = axes[row, i]
                img = imgs[i].permute(1, 2, 0).clamp(0, 1).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
                wrong = offset == 1 and int(pred[i]) != int(ex.y[i])
                ax.set_title(titles[i], fontsize=6, color="red" if wrong else "black")
            axes[row, 0].text(-0.1, 0.5, row_label, transform=axes[row, 0].transAxes, ha="right", va="center",
                              fontsize=6)
    fig.tight_layout()
    return fig
