"""The claims of the distillation and gradient-masking papers, checked against an audit report.

``evaluate_claims(report, per_sample, test_split)`` takes ``report.json`` of an audit that holds the
models of ``lit-defense run`` (``teacher``, ``distilled``, ``masked_*``, ``adv_train``), its
``per_sample.json`` and, optionally, every model's per-sample correctness on the whole test split
(``test_split.json``, written by ``lit-defense run``), and returns one entry per claim: ``{claim,
state, holds, text, evidence}``.

A claim is decided by the rule of the checklist (``lit_defense.stats.decide``): two models or two
attacks on the same inputs are compared on their per-sample outcomes (the discordant inputs:
exact interval and McNemar's test; a randomized model's expected accuracies by the same rule on
expectations, ``stats.paired``), a claim ``fails`` only when the numbers are significantly on
the wrong side of its bar, ``holds`` when the whole 95% interval is on the right side, and is
``inconclusive`` otherwise (``evidence["inputs_to_resolve"]``). ``holds`` is ``state == "holds"``.
Clean accuracy comes from the whole test split when it is there (10,000 images cost seconds), not
from the few hundred audited ones, and the distillation claims from the teacher and the student
attacked on the same larger subset (``test_split["attacks"]``) when it is there. ``add_claims_to_report(folder)`` adds the claims to
``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lit_defense.results import PerSample
from lit_defense.roles import AttackRoles
from lit_defense.stats import ALPHA, Decision, Paired, State, paired, worst_state

CLAIMS_TITLE = "## The papers' claims, checked on this run"
CLAIM_STATE = {"pass": "holds", "fail": "fails", "inconclusive": "inconclusive"}




def _both(decisions: Sequence[Decision]) -> State:
    return worst_state([d.state for d in decisions])


def _stats(pair: Paired, decisions: Sequence[Decision]) -> dict[str, Any]:
    """The evidence of a paired decision: n, discordant counts, p-value, interval, threshold(s)."""
    out = {**pair.evidence(), "difference": round(pair.difference, 6),
           "ci": [round(v, 6) for v in decisions[0].ci], "thresholds": [d.threshold for d in decisions]}
    need = max((d.inputs_to_resolve or 0 for d in decisions), default=0)
    return {**out, "inputs_to_resolve": need} if need else out


def evaluate_claims(report: dict[str, Any], per_sample: dict[str, Any] | None = None,
                    test_split: dict[str, Any] | None = None, eps: float | None = None,
                    alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Check the papers' claims (see module doc) at ``eps`` (default: the grid's value nearest 0.1)."""
    if per_sample is None:
        raise ValueError("the claims compare models on the same inputs: pass per_sample.json's data "
                         "(written next to report.json by every audit).")
    models = {m["name"]: m for m in report["models"]}
    per = {name: PerSample.from_dict(data) for name, data in per_sample["models"].items()}
    grid = sorted({r["eps"] for m in report["models"] for r in m["results"]})
    eps = eps if eps is not None else min(grid, key=lambda e: abs(e - 0.1))
    out: list[dict[str, Any]] = []

    def claim(name: str, state: State, text: str, **evidence: Any) -> None:
        out.append(_claim(name, state, text, **evidence))

    def acc(name: str, attack: str | None) -> float:  # a randomized model's: its expected accuracy
        return float(per[name].expected_to(attack, eps).double().mean())

    teacher, student = models.get("teacher"), models.get("distilled")
    if teacher and student:
        split = (test_split or {}).get("models", {})
        if "teacher" in split and "distilled" in split:
            s_ok, t_ok = (torch.tensor(split[m]["correct"], dtype=torch.bool) for m in ("distilled", "teacher"))
            where = f"the whole {test_split.get('split', 'test')} split"
        else:
            s_ok, t_ok = (per[m].clean for m in ("distilled", "teacher"))
            where = "the audited inputs"
        pair = paired(s_ok, t_ok)
        d = [pair.decide(0.03, alpha=alpha, strict=True), pair.decide(-0.03, above=False, alpha=alpha, strict=True)]
        lo, hi = d[0].ci
        claim("distilled_clean_accuracy_close_to_teacher", _both(d),
              f"The distilled student's clean accuracy is within 3 points of the teacher's on {where} "
              f"({float(s_ok.double().mean()):.1%} vs {float(t_ok.double().mean()):.1%}: {pair.difference:+.1%}, "
              f"95% interval [{lo:+.1%}, {hi:+.1%}]).",
              teacher=float(t_ok.double().mean()), student=float(s_ok.double().mean()), **_stats(pair, d))

        attacked = (test_split or {}).get("attacks", {})
        # measured on more test images than the audit's when the run has them, same inputs for both models
        more = {"teacher", "distilled"} <= set(attacked.get("models", {})) and abs(attacked["eps"] - eps) < 1e-12
        where = f"{attacked['n']} test images" if more else "the audited inputs"

        def rob(model: str, attack: str) -> torch.Tensor:
            if more:
                return torch.tensor(attacked["models"][model]["robust"][attack], dtype=torch.bool)
            return per[model].robust_to(attack, eps)

        def acc2(model: str, attack: str) -> float:
            return float(rob(model, attack).double().mean())

        # the attacks by their roles in the audit (the teacher's and the student's are the same kinds)
        roles = AttackRoles.from_dict(teacher["roles"])
        margin = roles.margin
        naive = {a: paired(rob("distilled", a), rob("teacher", a)) for a in (roles.one_step, roles.naive)}
        d = [p.decide(0.30, above=False, alpha=alpha, strict=True) for p in naive.values()]
        claim("distilled_looks_robust_to_naive_attacks", _both(d),
              f"Under the naive cross-entropy attacks (FGSM, PGD-CE) at eps={eps:g} the student looks far more "
              f"robust than the teacher (>= 30 points, on {where}): "
              + ", ".join(f"{a}: {acc2('distilled', a):.1%} vs {acc2('teacher', a):.1%} "
                          f"(difference {p.difference:+.1%}, 95% interval [{dec.ci[0]:+.1%}, {dec.ci[1]:+.1%}])"
                          for (a, p), dec in zip(naive.items(), d, strict=True)),
              eps=eps, **{a: _stats(p, [dec]) for (a, p), dec in zip(naive.items(), d, strict=True)})

        pair = paired(rob("distilled", margin), rob("teacher", margin))
        d = [pair.decide(0.05, alpha=alpha, strict=True)]
        claim("distilled_falls_to_margin_attacks", _both(d),
              f"Under the margin (Carlini-Wagner) loss the student is about as vulnerable as the teacher "
              f"({margin} at eps={eps:g} on {where}: {acc2('distilled', margin):.1%} vs "
              f"{acc2('teacher', margin):.1%}, difference {pair.difference:+.1%}, 95% interval "
              f"[{d[0].ci[0]:+.1%}, {d[0].ci[1]:+.1%}], bar +5 points; audit worst case {acc('distilled', None):.1%} "
              f"vs {acc('teacher', None):.1%}).",
              eps=eps, teacher=acc2("teacher", margin), student=acc2("distilled", margin), **_stats(pair, d))

    for name, m in models.items():
        if name.startswith("masked") and teacher:
            out.append(_masked_claim(name, m, AttackRoles.from_dict(teacher["roles"]).naive, per, eps, alpha))
    if models.get("adv_train"):
        out.append(_adv_train_claim(per, models["adv_train"], bool(teacher), eps, alpha))
        if models.get("robust_distilled"):
            out.append(_robust_distilled_keeps_robustness(per, "distilled" in models, eps, alpha,
                                                          (test_split or {}).get("attacks", {})))
    if models.get("robust_distilled"):
        out.append(_not_masked_claim("robust_distilled", models["robust_distilled"]))
    out.append(_verdict_claim(models))
    return out


def _claim(name: str, state: State, text: str, **evidence: Any) -> dict[str, Any]:
    """One claim's record in the report."""
    return {"claim": name, "state": CLAIM_STATE[state], "holds": state == "pass", "text": text, "evidence": evidence}


def _adv_train_claim(per: dict[str, PerSample], adv: dict[str, Any], teacher: bool, eps: float, alpha: float
                     ) -> dict[str, Any]:
    """The adversarially trained model keeps its robustness under every attack (and beats the teacher's)."""
    def acc(attack: str | None) -> float:
        return float(per["adv_train"].expected_to(attack, eps).double().mean())

    adv_naive = AttackRoles.from_dict(adv["roles"]).naive
    fell = paired(per["adv_train"].robust_to(adv_naive, eps), per["adv_train"].robust_to(None, eps))
    d = [fell.decide(0.05, alpha=alpha, strict=True)]
    evidence: dict[str, Any] = {"eps": eps, "naive": acc(adv_naive), "worst": acc(None),
                                "naive_minus_worst": _stats(fell, d)}
    if teacher:
        gain = paired(per["adv_train"].robust_to(None, eps), per["teacher"].robust_to(None, eps))
        d.append(gain.decide(0.20, above=False, alpha=alpha, strict=True))
        evidence["worst_minus_teacher_worst"] = _stats(gain, d[1:])
    return _claim("adv_train_does_not_fall", _both(d),
                  f"The adversarially trained model keeps its robustness under every attack: PGD-CE "
                  f"{acc(adv_naive):.1%}, worst case {acc(None):.1%} at eps={eps:g} (no adaptive "
                  f"attack more than 5 points lower: {fell.difference:.1%}, 95% interval up to {d[0].ci[1]:.1%}"
                  + (f"; at least 20 points above the teacher's worst case: {d[1].value:+.1%}" if teacher else "")
                  + ").", **evidence)


def _robust_distilled_keeps_robustness(per: dict[str, PerSample], distilled: bool, eps: float, alpha: float,
                                       attacked: dict[str, Any]) -> dict[str, Any]:
    """The robust student keeps its robust teacher's worst case (within 5 points) and beats the defensive one's by 20.

    Compared on the ``claim_samples`` test images under the white-box attacks where ``lit-defense
    run`` measured them (``test_split["attacks"]``: a 5-point bar needs more inputs than the
    audit's), else on the audited inputs' worst case. The audit's worst cases are in the text either way.
    """
    names = ["robust_distilled", "adv_train", *(["distilled"] if distilled else [])]
    more = set(names) <= set(attacked.get("models", {})) and abs(attacked["eps"] - eps) < 1e-12

    def worst(name: str) -> torch.Tensor:
        if more:
            robust = attacked["models"][name]["robust"].values()
            return torch.stack([torch.tensor(r, dtype=torch.bool) for r in robust]).all(0)
        return per[name].robust_to(None, eps)

    def acc(name: str) -> float:
        return float(worst(name).double().mean())

    def audited(name: str) -> float:
        return float(per[name].expected_to(None, eps).double().mean())

    where = (f"the worst of the white-box attacks on {attacked['n']} test images" if more
             else "the worst case on the audited inputs")
    kept = paired(worst("robust_distilled"), worst("adv_train"))
    d = [kept.decide(-0.05, above=False, alpha=alpha, strict=True)]
    evidence: dict[str, Any] = {"eps": eps, "where": where, "robust_distilled": acc("robust_distilled"),
                                "adv_train": acc("adv_train"), "minus_teacher": _stats(kept, d),
                                "audit_worst_case": {n: audited(n) for n in names}}
    text = (f"The robustly distilled student keeps its robust teacher's robustness ({where}, eps={eps:g}): "
            f"{acc('robust_distilled'):.1%} vs adv_train's {acc('adv_train'):.1%} (difference {kept.difference:+.1%}, "
            f"95% interval [{d[0].ci[0]:+.1%}, {d[0].ci[1]:+.1%}], bar -5 points)")
    if distilled:
        gain = paired(worst("robust_distilled"), worst("distilled"))
        d.append(gain.decide(0.20, above=False, alpha=alpha, strict=True))
        evidence["distilled"] = acc("distilled")
        evidence["minus_distilled"] = _stats(gain, d[1:])
        text += (f"; the defensively distilled student keeps {acc('distilled'):.1%} ({gain.difference:+.1%}, 95% "
                 f"interval [{d[1].ci[0]:+.1%}, {d[1].ci[1]:+.1%}], bar +20 points)")
    text += ("; the audit's worst cases: " + ", ".join(f"{n} {audited(n):.1%}" for n in names))
    return _claim("robust_distilled_keeps_robustness", _both(d), text + ".", **evidence)


def _verdict(m: dict[str, Any]) -> str:
    """A model's gradient-masking verdict in report.json (older reports carry only ``suspected``)."""
    masking = m["gradient_masking"]
    return masking.get("state", "suspected" if masking["suspected"] else "not suspected")


def _not_masked_claim(name: str, m: dict[str, Any]) -> dict[str, Any]:
    """A model the audit should trust: not suspected of masking, and its positive control passed."""
    masking = m["gradient_masking"]
    verdict = _verdict(m)
    control = next((c for c in masking.get("checks", []) if c["name"] == "attack_inadequate"), None)
    applicable = bool(control and control.get("evidence", {}).get("applicable"))
    control_state = control["state"] if applicable else "inconclusive"
    state: State = worst_state(["pass" if verdict == "not suspected" else
                                "fail" if verdict == "suspected" else "inconclusive", control_state])
    ad = m.get("adequacy") or {}
    shown = (f"the attacks solved {ad['passed']} of {ad['valid']} binarization tasks" if ad.get("valid")
             else "the binarization test had no task to run")
    return _claim(f"{name}_not_masked", state,
                  f"{name}: the audit finds no sign of gradient masking ({verdict}) and its positive control "
                  f"passes ({shown}: {control_state}).",
                  verdict=verdict, positive_control=control_state, adequacy={k: ad.get(k) for k in ("passed", "valid", "rate", "ci")})


def _verdict_claim(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The audit flags the distilled, T=100 and masked models, and neither the teacher nor adversarial training."""
    states = {n: _verdict(m) for n, m in models.items()}
    # the T=100 distillation teacher, deployed at T=1, saturates its softmax just like the student
    should = {n: "suspected" if n.startswith(("distill", "masked")) else "not suspected" for n in states}
    wrong = [n for n in states if states[n] != should[n] and states[n] != "inconclusive"]
    state: State = "fail" if wrong else "inconclusive" if "inconclusive" in states.values() else "pass"
    return _claim("audit_verdicts", state,
                  "The audit flags the distilled (and T=100 teacher) and masked models and neither the undefended "
                  "teacher nor the adversarially trained model: " + ", ".join(f"{n} {s}" for n, s in states.items()),
                  verdicts=states, expected=should)


def _masked_claim(name: str, m: dict[str, Any], teacher_naive: str, per: dict[str, PerSample], eps: float, alpha: float
                  ) -> dict[str, Any]:
    """A masked model falls to the adaptive attacks: they remove at least half of its apparent gain.

    The apparent gain is its naive robust accuracy minus the teacher's (paired, same inputs), the
    removed part its naive minus its worst case (paired, same model). The claim holds when the
    lower bound of the removed part is at least half the upper bound of the gain, fails when the
    upper bound of the removed part is below half the lower bound of the gain (one-sided ``alpha``
    each), and is inconclusive in between.
    """
    # a randomized model's outcomes are expectations over its randomness: the same paired rule on them
    naive_m, worst_m = per[name].expected_to(AttackRoles.from_dict(m["roles"]).naive, eps), per[name].expected_to(None, eps)
    gain = paired(naive_m, per["teacher"].robust_to(teacher_naive, eps))
    removed = paired(naive_m, worst_m)
    g_lo, g_hi = gain.interval()
    r_lo, r_hi = removed.interval()
    ga_lo, _ = gain.bounds(alpha)
    _, ra_hi = removed.bounds(alpha)
    state: State = "fail" if gain.difference <= 0 or ra_hi < 0.5 * ga_lo else \
        "pass" if r_lo >= 0.5 * g_hi else "inconclusive"
    adaptive = [a for a in AttackRoles.from_dict(m["roles"]).adaptive if a.startswith(("bpda", "eot"))]
    best = min((float(per[name].expected_to(a, eps).double().mean()) for a in adaptive), default=None)
    naive, worst = float(naive_m.double().mean()), float(worst_m.double().mean())
    return {
        "claim": f"{name}_falls_to_adaptive_attacks", "state": CLAIM_STATE[state], "holds": state == "pass",
        "text": f"{name}: the naive PGD-CE leaves {naive:.1%} ({gain.difference:+.1%} over the teacher, 95% interval "
                f"[{g_lo:+.1%}, {g_hi:+.1%}]); the adaptive attacks leave {worst:.1%} (worst case; "
                f"{', '.join(adaptive) or 'no BPDA/EOT'} alone: {best if best is not None else float('nan'):.1%}), "
                f"removing {removed.difference:.1%} (95% interval [{r_lo:.1%}, {r_hi:.1%}]): at least half of the "
                "apparent gain.",
        "evidence": {"eps": eps, "naive": naive, "worst": worst, "bpda_eot": best,
                     "gain_over_teacher": {**gain.evidence(), "difference": gain.difference, "ci": [g_lo, g_hi]},
                     "removed": {**removed.evidence(), "difference": removed.difference, "ci": [r_lo, r_hi]}},
    }


def claims_markdown(claims: list[dict[str, Any]]) -> str:
    """The claims as a Markdown table."""
    shown = {"holds": "yes", "fails": "**no**", "inconclusive": "*inconclusive*"}
    lines = [CLAIMS_TITLE, "",
             "A claim holds when the 95% interval of its numbers is on the right side of its bar, fails when "
             "they are significantly on the wrong side (one-sided 1%), and is inconclusive in between. Models "
             "and attacks are compared on the same inputs (paired).", "",
             "| claim | holds | what the numbers say |", "|---|---|---|"]
    for c in claims:
        need = c["evidence"].get("inputs_to_resolve")
        more = f" About {need} inputs would decide it." if c["state"] == "inconclusive" and need else ""
        lines.append(f"| {c['claim']} | {shown[c['state']]} | {(c['text'] + more).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def add_claims_to_report(folder: str | Path) -> list[dict[str, Any]]:
    """Evaluate the claims of ``folder/report.json`` and append them to the report files.

    Reads ``per_sample.json`` and, where ``lit-defense run`` wrote it, ``test_split.json``.
    """
    folder = Path(folder)
    report = json.loads((folder / "report.json").read_text())
    claims = evaluate_claims(report, _read(folder / "per_sample.json"), _read(folder / "test_split.json"))
    report["claims"] = claims
    (folder / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    md = (folder / "report.md").read_text()
    md = md.split(CLAIMS_TITLE)[0].rstrip() + "\n\n" + claims_markdown(claims)
    (folder / "report.md").write_text(md)
    return claims


__all__ = ["add_claims_to_report", "claims_markdown", "evaluate_claims"]
