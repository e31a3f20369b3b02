"""The claims of the distillation and gradient-masking papers, checked against an audit report.

``evaluate_claims(report)`` takes ``report.json`` of an audit that holds the models of
``lit-defense run`` (``teacher``, ``distilled``, ``masked_*``, ``adv_train``) and returns one
entry per claim: ``{claim, holds, evidence, text}``. ``add_claims_to_report(folder)`` adds them to
``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLAIMS_TITLE = "## The papers' claims, checked on this run"


def _acc(model: dict, attack: str, eps: float) -> float | None:
    for r in model["results"]:
        if r["attack"] == attack and abs(r["eps"] - eps) < 1e-12:
            return r["robust_accuracy"]
    return None


def _worst(model: dict, eps: float) -> float:
    return model["worst_case"][f"{eps:.6g}"]


def evaluate_claims(report: dict[str, Any], eps: float | None = None) -> list[dict[str, Any]]:
    """Check the distillation and masking papers' claims against an audit report, at ``eps`` (default: the grid's value nearest 0.1)."""
    models = {m["name"]: m for m in report["models"]}
    grid = sorted({r["eps"] for m in report["models"] for r in m["results"]})
    eps = eps if eps is not None else min(grid, key=lambda e: abs(e - 0.1))
    out: list[dict[str, Any]] = []

    def claim(name: str, holds: bool, text: str, **evidence: Any) -> None:
        out.append({"claim": name, "holds": bool(holds), "text": text, "evidence": evidence})

    teacher, student = models.get("teacher"), models.get("distilled")
    if teacher and student:
        gap = student["clean_accuracy"] - teacher["clean_accuracy"]
        claim("distilled_clean_accuracy_close_to_teacher", abs(gap) <= 0.03,
              f"The distilled student's clean accuracy is within 3 points of the teacher's ({gap:+.1%}).",
              teacher=teacher["clean_accuracy"], student=student["clean_accuracy"])
        naive = {a: (_acc(teacher, a, eps), _acc(student, a, eps)) for a in ("fgsm", "pgd_ce")}
        looks = all(s is not None and t is not None and s - t >= 0.30 for t, s in naive.values())
        claim("distilled_looks_robust_to_naive_attacks", looks,
              f"Under the naive cross-entropy attacks (FGSM, PGD-CE) at eps={eps:g} the student looks far more "
              "robust than the teacher (>= 30 points): "
              + ", ".join(f"{a}: {s:.1%} vs {t:.1%}" for a, (t, s) in naive.items() if t is not None and s is not None),
              eps=eps, **{f"{a}_teacher": t for a, (t, _) in naive.items()},
              **{f"{a}_student": s for a, (_, s) in naive.items()})
        m_t, m_s = _acc(teacher, "pgd_margin", eps), _acc(student, "pgd_margin", eps)
        claim("distilled_falls_to_margin_attacks", m_t is not None and m_s is not None and m_s <= m_t + 0.05,
              f"Under the margin (Carlini-Wagner) loss the student is about as vulnerable as the teacher "
              f"(PGD-margin at eps={eps:g}: {m_s:.1%} vs {m_t:.1%}; worst case {_worst(student, eps):.1%} vs "
              f"{_worst(teacher, eps):.1%}).", eps=eps, teacher=m_t, student=m_s)
    t_naive = _acc(teacher, "pgd_ce", eps) if teacher else 0.0
    for name, m in models.items():
        if not name.startswith("masked"):
            continue
        naive, worst = _acc(m, "pgd_ce", eps), _worst(m, eps)
        adaptive = [a for a in m["roles"]["adaptive"] if a.startswith(("bpda", "eot"))]
        best = min((_acc(m, a, eps) for a in adaptive), default=None)
        gain = (naive or 0.0) - (t_naive or 0.0)
        holds = naive is not None and gain > 0 and (naive - worst) >= 0.5 * gain
        claim(f"{name}_falls_to_adaptive_attacks", holds,
              f"{name}: the naive PGD-CE leaves {naive:.1%} (teacher: {t_naive:.1%}); the adaptive attacks leave "
              f"{worst:.1%} (worst case; {', '.join(adaptive) or 'no BPDA/EOT'} alone: "
              f"{best if best is not None else float('nan'):.1%}), removing at least half of the apparent gain.",
              eps=eps, naive=naive, bpda_eot=best, worst=worst, teacher_naive=t_naive)
    adv = models.get("adv_train")
    if adv:
        naive, worst = _acc(adv, "pgd_ce", eps), _worst(adv, eps)
        holds = naive is not None and naive - worst <= 0.05 and (not teacher or worst >= _worst(teacher, eps) + 0.2)
        claim("adv_train_does_not_fall", holds,
              f"The adversarially trained model keeps its robustness under every attack: PGD-CE {naive:.1%}, "
              f"worst case {worst:.1%} at eps={eps:g} (no adaptive attack more than 5 points lower).",
              eps=eps, naive=naive, worst=worst)
    flagged = {n: m["gradient_masking"]["suspected"] for n, m in models.items()}
    # the T=100 distillation teacher, deployed at T=1, saturates its softmax just like the student
    should = {n: (n.startswith(("distill", "masked"))) for n in flagged}
    claim("audit_verdicts", all(flagged[n] == should[n] for n in flagged),
          "The audit flags the distilled (and T=100 teacher) and masked models and neither the undefended "
          "teacher nor the adversarially trained model: " + ", ".join(
              f"{n} {'flagged' if f else 'not flagged'}" for n, f in flagged.items()),
          flagged=flagged)
    return out


def claims_markdown(claims: list[dict[str, Any]]) -> str:
    """The claims as a Markdown table."""
    lines = [CLAIMS_TITLE, "", "| claim | holds | what the numbers say |", "|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['text'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def add_claims_to_report(folder: str | Path) -> list[dict[str, Any]]:
    """Evaluate the claims of ``folder/report.json`` and append them to the report files."""
    folder = Path(folder)
    report = json.loads((folder / "report.json").read_text())
    claims = evaluate_claims(report)
    report["claims"] = claims
    (folder / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    md = (folder / "report.md").read_text()
    md = md.split(CLAIMS_TITLE)[0].rstrip() + "\n\n" + claims_markdown(claims)
    (folder / "report.md").write_text(md)
    return claims


__all__ = ["add_claims_to_report", "claims_markdown", "evaluate_claims"]
