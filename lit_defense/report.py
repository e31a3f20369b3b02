"""The audit's report: ``report.json``, ``report.md`` and PNG plots (and TensorBoard scalars).

``report.json`` holds, per model: ``name``, ``clean_accuracy`` (an *estimate*: ``{value, ci:
[low, high], k, n}``, ``lit_defense.stats.Estimate``), ``results`` (``{attack, eps,
robust_accuracy, ci, n, stage}``), ``worst_case`` (eps -> estimate of the robust accuracy over all
attacks) and ``gradient_masking`` (``{suspected, state, triggered, inconclusive, checks: [{name,
state, kind, passed, value, summary, evidence}]}``). ``report.md`` says the same in tables and
plain words, every accuracy with its exact 95% interval; the plots draw the intervals as bands.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_defense.results import ModelAudit, eps_key

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

HOW_TO_READ = """\
**How to read this.** *Apparent* robustness is what the naive attack (`{naive}`: PGD on the
cross-entropy, the attack most papers of 2016-2017 used) leaves standing. *Worst case* is what
survives every attack of the audit, including those that see through masked gradients: margin
(logit) losses, BPDA, EOT, random sampling and gradient-free search. A large gap between the two is
the signature of gradient masking: the model is not robust, its gradients only mislead the naive
attack. Trust the worst-case column, and only for models the checklist does not flag."""


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _with_ci(audit: ModelAudit, value: float | None, key: str | None = None) -> str:
    """``82.5% [78.4, 86.1]``: an accuracy of ``audit`` with its 95% interval (``key``: see ``ModelAudit.estimate``)."""
    return "n/a" if value is None or not math.isfinite(value) else audit.estimate(value, key).text()


def _expected_line(audit: ModelAudit) -> str:
    """How a randomized model's numbers were judged, and the majority-vote view beside them."""
    exp = audit.expected or {}
    vote = exp.get("majority_vote", {})

    def shown(key: str) -> str:
        v = vote.get(key)
        return "n/a" if v is None else f"{100 * v['value']:.1f}% [{100 * v['ci'][0]:.1f}, {100 * v['ci'][1]:.1f}]"

    return (f"**Randomized model.** Its outputs change from one pass to the next, so every number is its *expected* "
            f"accuracy over its own randomness, {exp.get('draws', '?')} draws per point: per input, the worst of the "
            "attacks' points is selected on one set of draws and measured on fresh ones, and each interval accounts "
            "for the inputs and the draws. *Majority vote* (secondary; what a defence voting over many draws would "
            f"get): clean {shown('clean')}; " + "; ".join(f"worst case @{e:g} {shown(eps_key(e))}" for e in audit.eps)
            + ".")


def _adequacy_line(ad: dict[str, Any]) -> str:
    """The binarization test in words, beside the verdict."""
    if not ad.get("valid"):
        return (f"binarization test at eps={ad['eps']:g}: not applicable ({ad.get('samples', 0)} robust inputs tested, "
                f"none made a valid task: {ad.get('dropped') or 'no robust input'}). "
                "(`--suite.adequacy_samples 0` turns this test off.)")
    lo, hi = ad["ci"]
    return (f"binarization test at eps={ad['eps']:g}: the attacks solved {ad['passed']} of {ad['valid']} tasks where an "
            f"adversarial example surely exists, rate {ad['rate']:.0%} [{lo:.0%}, {hi:.0%}]"
            + (f"; {sum(ad['dropped'].values())} of {ad['samples']} dropped ({ad['dropped']})" if ad.get("dropped") else "")
            + f". {ad.get('note', '')}. (`--suite.adequacy_samples 0` turns this test off.)")


def _flag(audit: ModelAudit) -> str:
    v = audit.gradient_masking
    if v.suspected:
        return "**suspected**: " + ", ".join(v.triggered)
    if v.state == "inconclusive":
        return "*inconclusive*: " + ", ".join(v.inconclusive)
    return "not suspected"


RESULT_TEXT = {"pass": "pass", "fail": "**FAIL**", "inconclusive": "*inconclusive*"}


def _shown(evidence: dict[str, Any]) -> dict[str, Any]:
    """The evidence with its statistics first (n, discordant counts, p-value, interval)."""
    first = [k for k in ("n", "discordant", "p_value", "ci", "threshold", "inputs_to_resolve") if k in evidence]
    return {**{k: evidence[k] for k in first}, **{k: v for k, v in evidence.items() if k not in first}}


def _evidence_text(evidence: dict[str, Any], limit: int = 8) -> str:
    parts = []
    for key, value in evidence.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
            value = f"({value})"
        parts.append(f"{key}={value}")
        if len(parts) == limit:
            break
    return "; ".join(parts).replace("|", "/")


def to_json(audits: Sequence[ModelAudit], meta: dict[str, Any]) -> dict[str, Any]:
    """The report as plain data: ``meta`` plus every model's audit."""
    return {**meta, "models": [a.to_dict() for a in audits]}


def markdown(audits: Sequence[ModelAudit], meta: dict[str, Any]) -> str:
    """The report people read: tables of robust accuracy, verdicts and the checks that fired."""
    eps = audits[0].eps if audits else []
    norm = audits[0].norm if audits else "linf"
    naive = audits[0].roles.naive if audits else "pgd_ce"
    lines = [
        "# Robustness audit",
        "",
        f"{meta.get('num_samples', '?')} {meta.get('split', 'test')} images of `{meta.get('data', '?')}`, "
        f"{norm} threat model, eps in {', '.join(f'{e:g}' for e in eps)}. Written by lit-defense "
        f"{meta.get('version', '')} on {meta.get('created', '')}.",
        *([f"Classes: {', '.join(meta['class_names'])}.", ""] if meta.get("class_names") else [""]),
        HOW_TO_READ.format(naive=naive),
        "",
        "## Comparison",
        "",
        "| model | clean | " + " | ".join(f"apparent @{e:g} | worst case @{e:g}" for e in eps)
        + " | gradient masking |",
        "|---|---:|" + "---:|---:|" * len(eps) + "---|",
    ]
    for a in audits:
        naive_curve = a.curve(a.roles.naive)
        cells = " | ".join(f"{_with_ci(a, naive_curve.get(e))} | "
                           f"**{_with_ci(a, a.worst_case[eps_key(e)], eps_key(e))}**" for e in a.eps)
        lines.append(f"| {a.name}{' (expected)' if a.expected else ''} | {_with_ci(a, a.clean_accuracy, 'clean')} | "
                     f"{cells} | {_flag(a)} |")
    lines += ["", "Each accuracy is followed by its exact (Clopper-Pearson) 95% interval, in points. A randomized "
              "model's (expected) numbers are means of each input's accuracy over the model's own randomness, "
              "their intervals exact at the effective sample size of inputs and draws.", "",
              "![robust accuracy of all models](robust_accuracy_all.png)", ""]
    for a in audits:
        lines += [
            f"## {a.name}",
            "",
            f"Source: `{a.source}`. Clean accuracy {_with_ci(a, a.clean_accuracy, 'clean')} on {a.num_samples} images; "
            f"audited in {a.seconds:.0f} s.",
            "",
            *([_expected_line(a), ""] if a.expected else []),
            f"**Verdict.** {a.gradient_masking.explain()}",
            "",
            *([f"**Positive control.** {_adequacy_line(a.adequacy)}", ""] if a.adequacy else []),
            "| attack | stage | " + " | ".join(f"eps={e:g}" for e in a.eps) + " |",
            "|---|---|" + "---:|" * len(a.eps),
        ]
        seen: list[tuple[str, str]] = []
        for r in a.results:
            if (r["attack"], r["stage"]) not in seen:
                seen.append((r["attack"], r["stage"]))
        for attack, stage in seen:
            curve = a.curve(attack)
            role = " (naive)" if attack == a.roles.naive else ""
            stage_text = "own" if stage == "white_box" else "after all above"
            lines.append(f"| {attack}{role} | {stage_text} | "
                         + " | ".join(_with_ci(a, curve.get(e)) for e in a.eps) + " |")
        lines.append("| **worst case** | all | "
                     + " | ".join(f"**{_with_ci(a, a.worst_case[eps_key(e)], eps_key(e))}**" for e in a.eps) + " |")
        lines += ["", "| check | kind | result | value | evidence |", "|---|---|---|---:|---|"]
        for c in a.gradient_masking.checks:
            result = RESULT_TEXT[c.state] if not c.advisory or c.passed else f"warn (advisory, {c.state})"
            value = "" if c.value is None else f"{c.value:.4g}"
            lines.append(f"| {c.name} | {c.kind} | {result} | {value} | {_evidence_text(_shown(c.evidence))} |")
        lines += ["", f"![{a.name}](robust_accuracy_{_slug(a.name)}.png)", ""]
    lines += ["![adversarial examples](adversarial_examples.png)", ""]
    return "\n".join(lines)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


# --------------------------------------------------------------------------------------- plots
def model_figure(audit: ModelAudit) -> Figure:
    """Apparent vs worst-case robust accuracy over eps for one model."""
    from lit_defense.plots import plt

    fig, ax = plt.subplots(figsize=(8.5, 4), dpi=100)
    eps = [0.0, *audit.eps]
    names: list[str] = []
    for r in audit.results:
        if r["stage"] == "white_box" and r["attack"] not in names:
            names.append(r["attack"])
    for name in names:
        curve = audit.curve(name)
        ax.plot(eps, [audit.clean_accuracy, *(curve[e] for e in audit.eps)], "--o", linewidth=1, alpha=0.8,
                label=name + (" (naive)" if name == audit.roles.naive else ""))
    worst = [audit.clean_accuracy, *(audit.worst_case[eps_key(e)] for e in audit.eps)]
    ax.plot(eps, worst, "-o", color="black", linewidth=2.5, label="worst case (all attacks)")
    _band(ax, audit, eps, worst, "black", "95% interval")
    _finish(ax, f"{audit.name}: robust accuracy ({audit.norm})", audit.norm)
    fig.tight_layout()
    return fig


def comparison_figure(audits: Sequence[ModelAudit]) -> Figure:
    """Apparent (naive attack, dashed) vs worst-case (solid) robust accuracy of every model."""
    from lit_defense.plots import plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, a in enumerate(audits):
        color = colors[i % len(colors)]
        eps = [0.0, *a.eps]
        naive = a.curve(a.roles.naive)
        ax.plot(eps, [a.clean_accuracy, *(naive[e] for e in a.eps)], "--", color=color, alpha=0.7,
                label=f"{a.name}: apparent ({a.roles.naive})")
        worst = [a.clean_accuracy, *(a.worst_case[eps_key(e)] for e in a.eps)]
        ax.plot(eps, worst, "-o", color=color, linewidth=2,
                label=f"{a.name}: worst case" + (" [masking]" if a.gradient_masking.suspected else ""))
        _band(ax, a, eps, worst, color)
    _finish(ax, "apparent (dashed) vs worst-case (solid, 95% interval shaded) robust accuracy",
            audits[0].norm if audits else "linf")
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def _band(ax: Axes, audit: ModelAudit, eps: Sequence[float], values: Sequence[float], color: str,
          label: str | None = None) -> None:
    """The exact 95% intervals of a curve of ``audit``'s accuracies, as a shaded band."""
    bounds = [audit.estimate(v).ci for v in values]
    ax.fill_between(eps, [lo for lo, _ in bounds], [hi for _, hi in bounds], color=color, alpha=0.15,
                    linewidth=0, label=label)


def _finish(ax: Axes, title: str, norm: str) -> None:
    ax.set_xlabel(f"eps ({norm})")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    # outside the axes, right of the curves, so no legend hides a curve
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def examples_figure(audits: Sequence[ModelAudit], eps: float | None = None,
                    class_names: Sequence[str] = ()) -> Figure:
    """For each model, clean images over their worst-case adversarial versions at ``eps``.

    ``eps`` defaults to each model's middle eps; drawn by ``lit_defense.plots.draw_examples``.
    """
    from lit_defense.plots import draw_examples

    return draw_examples([(a.name, a.examples, eps if eps is not None else a.eps[len(a.eps) // 2])
                          for a in audits if a.examples is not None], class_names)


# --------------------------------------------------------------------------------------- write
def write_report(audits: Sequence[ModelAudit], output_dir: str | Path, meta: dict[str, Any] | None = None,
                 tensorboard: bool = True, samples: dict[str, list] | None = None) -> dict[str, Path]:
    """Write report.json, report.md, per_sample.json, the PNG plots (and TensorBoard) into ``output_dir``.

    ``per_sample.json`` (plain JSON: loads without executing code) holds, for the audited inputs
    in order (``samples``: their positions in the split, ``index``, and their labels), every
    model's per-sample results (``ModelAudit.per_sample``).
    """
    from lit_defense.plots import plt

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), **(meta or {})}
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(to_json(audits, meta), indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(markdown(audits, meta) + "\n")
    paths["per_sample"] = out / "per_sample.json"
    paths["per_sample"].write_text(json.dumps({
        **(samples or {}), "class_names": meta.get("class_names", []), "norm": meta.get("norm"),
        "eps": meta.get("eps"), "models": {a.name: a.per_sample.to_dict() if a.per_sample else {} for a in audits},
    }, allow_nan=False) + "\n")
    per_model = {a.name: model_figure(a) for a in audits}
    figures = {"robust_accuracy_all.png": comparison_figure(audits),
               "adversarial_examples.png": examples_figure(audits, class_names=meta.get("class_names", ())),
               **{f"robust_accuracy_{_slug(name)}.png": fig for name, fig in per_model.items()}}
    for name, fig in figures.items():
        fig.savefig(out / name)
        paths[name] = out / name
    if tensorboard:
        paths["tensorboard"] = write_tensorboard(audits, out / "tensorboard", per_model)
    for fig in figures.values():
        plt.close(fig)
    return paths


def write_tensorboard(audits: Sequence[ModelAudit], log_dir: Path, figures: dict | None = None) -> Path:
    """One TensorBoard run per model (``<log_dir>/<model>``), under the project's metric names.

    ``figures`` (model name -> figure) reuses figures already drawn; the others are drawn here.
    """
    from torch.utils.tensorboard import SummaryWriter

    from lit_defense.plots import draw_examples

    for a in audits:
        with SummaryWriter(str(log_dir / _slug(a.name))) as writer:
            for name, value in a.metrics().items():
                writer.add_scalar(name, value, 0)
            fig = (figures or {}).get(a.name)
            writer.add_figure("audit/robust_accuracy_vs_eps", fig if fig is not None else model_figure(a), 0,
                              close=fig is None)
            if a.examples is not None and len(a.examples):
                e = a.eps[len(a.eps) // 2]
                writer.add_figure(f"audit/examples/eps={eps_key(e)}", draw_examples([(a.name, a.examples, e)]), 0,
                                  close=True)
    return log_dir


__all__ = ["comparison_figure", "examples_figure", "markdown", "model_figure", "to_json", "write_report",
           "write_tensorboard"]
