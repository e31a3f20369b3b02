"""``lit-defense audit``.

Attack any model with attacks that see through masking, run the gradient-masking checklist, and
write a report people can read.

A model is a lit-defense checkpoint or any ``torch.nn.Module`` that maps [0, 1] images to logits,
given as ``class_path``/``init_args`` with optional state-dict ``weights`` (loaded with
``weights_only=True``). For every eps of the grid the audit runs

1. white-box attacks, each on every clean-correct input (their numbers are side by side, for the
   checklist): FGSM and PGD with the cross-entropy (the *naive* view), PGD with the margin loss
   (sees through softmax saturation), BPDA around it when the model has submodules declaring
   ``differentiable = False``, EOT around it when the model's outputs are random;
2. a cascade on the inputs every white-box attack failed on, each attack only on the inputs all
   earlier ones failed on: APGD with the cross-entropy and targeted APGD (APGD-T, targeted DLR
   over the most likely wrong classes) as AutoAttack runs them, behind BPDA and EOT where stage 1
   used them; the minimum-norm FMN (one run for the whole grid); then the gradient-free attacks:
   random sampling in the ball, Square (L-inf), RayS (decision-based, L-inf) when the gradients
   are unusable, and optional transfer attacks.

``worst_case`` is the per-input worst case over all of them. Measured against the reference
AutoAttack (``benchmarks/vs_autoattack.py``): at least as strong, in a fraction of its time. The checklist
(``lit_defense.diagnostics``) turns the comparisons into a verdict. ``lit_defense.report`` writes
``report.json``, ``report.md`` and the plots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_defense.attacks import (
    APGD,
    BPDA,
    EOT,
    FGSM,
    FMN,
    PGD,
    Attack,
    RandomSampling,
    RayS,
    Square,
    masked_modules,
)
from lit_defense.checkpoints import (
    is_lightning_checkpoint,
    load_checkpoint_file,
    load_weights,
)
from lit_defense.diagnostics import (
    MaskingThresholds,
    check_adaptive_vs_naive,
    check_extra_found,
    check_incomplete_optimisation,
    check_monotone,
    check_one_step_vs_iterative,
    check_silent_success,
    check_unbounded,
    looks_like_probabilities,
    model_checks,
)
from lit_defense.errors import ConfigError
from lit_defense.evaluation import check_attacks, robustness_counts
from lit_defense.modules.loading import module_from_checkpoint
from lit_defense.naming import resolve_class
from lit_defense.results import Check, ModelAudit, attack_curve, eps_key, num, verdict

# The default eps grid of ``lit-defense audit`` (L-inf on [0, 1] pixels, Fashion-MNIST/MNIST scale).
DEFAULT_EPS = (0.05, 0.1, 0.2)


@dataclass
class ModelSpec:
    """One model to audit.

    ``checkpoint`` (a lit-defense ``.ckpt``), or ``class_path`` + ``init_args`` of any ``nn.Module``
    (plus optional ``weights``: a state dict or a Lightning checkpoint, read with
    ``weights_only=True``). ``name`` defaults to the run's folder name.
    """

    name: str | None = None
    checkpoint: str | None = None
    class_path: str | None = None
    init_args: dict[str, Any] | None = None
    weights: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """A spec from one entry of the audit's YAML ``models`` list; unknown keys are refused."""
        known = {"name", "checkpoint", "class_path", "init_args", "weights"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model keys {unknown}; a model takes {sorted(known)}.")
        return cls(**data)

    def display_name(self) -> str:
        """The name in the report: ``name``, else the checkpoint's run folder, else the class."""
        if self.name:
            return self.name
        if self.checkpoint:
            parts = [p for p in Path(self.checkpoint).with_suffix("").parts
                     if p != "checkpoints" and not p.startswith("version_")]
            return parts[-2] if len(parts) >= 2 else parts[-1]
        return (self.class_path or "model").rsplit(".", 1)[-1]


@dataclass
class AttackSuite:
    """Settings of the default attacks.

    Args:
        steps: PGD steps of the white-box stage (the incompleteness check doubles them).
        eot_samples: EOT samples per gradient for randomized models.
        square_queries: Square attack queries per input (L-inf only; 0 disables it).
        random_samples: random points of the ball per input (0 disables random sampling).
        restarts: PGD restarts of the adaptive (margin-loss) attack.
        apgd_steps: APGD-CE iterations in the cascade (0 disables APGD-CE and APGD-T).
        apgd_targets: target classes of APGD-T, the most likely wrong ones (AutoAttack: all 9 of
            10 classes; 0 disables it).
        apgd_targeted_steps: APGD-T iterations per target (AutoAttack: 100); 50 keeps all nine
            targets within a third of AutoAttack's time (``benchmarks/vs_autoattack.py``).
        min_norm_steps: FMN iterations (0 disables the minimum-norm attack).
        rays_queries: RayS queries per input (L-inf), run when the gradients are unusable;
            multiplied by ``escalation`` like the other gradient-free budgets (0 disables it).
        escalation: when the model checks find the gradients themselves unusable (zero margin
            gradients, gradients that disagree with finite differences, optimisation inside the
            forward pass) and the model declares no module BPDA could route around, the
            gradient-free attacks are the main line: their query and sample budgets are
            multiplied by this.
    """

    steps: int = 20
    eot_samples: int = 10
    square_queries: int = 1000
    random_samples: int = 100
    restarts: int = 1
    apgd_steps: int = 100
    apgd_targets: int = 9
    apgd_targeted_steps: int = 50
    min_norm_steps: int = 100
    rays_queries: int = 1000
    escalation: int = 5


# ---------------------------------------------------------------------------------- loading
def load_model(spec: ModelSpec) -> nn.Module:
    """The model a spec names, in eval mode (see ``ModelSpec``)."""
    if bool(spec.checkpoint) == bool(spec.class_path):
        raise ConfigError(
            f"model {spec.display_name()!r}: give exactly one of `checkpoint` (a lit-defense .ckpt) "
            "or `class_path` (+ `init_args`, `weights`) of an nn.Module."
        )
    if spec.checkpoint:
        if not Path(spec.checkpoint).is_file():
            raise ConfigError(f"checkpoint {spec.checkpoint} does not exist; check the path.")
        return module_from_checkpoint(spec.checkpoint, "audited checkpoint")
    cls = resolve_class(spec.class_path, nn.Module, what="model class")
    try:
        model = cls(**(spec.init_args or {}))
    except TypeError as err:
        raise ConfigError(f"{spec.class_path}(**init_args) failed: {err}.") from None
    if spec.weights:
        state = load_checkpoint_file(spec.weights, "model weights")
        if is_lightning_checkpoint(state) or "state_dict" in state:
            state = state["state_dict"]
        load_weights(model, state, spec.weights, "model weights")
    return model.eval()


def check_model_outputs(model: nn.Module, x: torch.Tensor, num_classes: int, name: str,
                        allow_probabilities: bool = False) -> None:
    """One clear error when the model does not map images to (N, num_classes) logits."""
    try:
        with torch.no_grad():
            out = model(x[:64])
    except Exception as err:
        raise ConfigError(
            f"model {name!r} fails on a batch of shape {tuple(x[:64].shape)} in [0, 1]: "
            f"{type(err).__name__}: {err}"
        ) from None
    expected = (min(64, x.shape[0]), num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model {name!r} returns {shape} for {expected[0]} images; the audit needs logits of "
            f"shape (N, {num_classes}). Wrap the model so that its forward returns the logits tensor."
        )
    if not out.is_floating_point() or not torch.isfinite(out).all():
        raise ConfigError(f"model {name!r} returns non-finite or non-float outputs; it needs float logits.")
    if not allow_probabilities and looks_like_probabilities(out):
        raise ConfigError(
            f"model {name!r} returns probabilities (rows in [0, 1] summing to 1), not logits: "
            "attacks on probabilities are weak and the audit would overstate robustness. Return the "
            "logits (drop the final softmax), or pass --allow_probabilities true to audit it as it is."
        )


# -------------------------------------------------------------------------------- attacks
def default_attacks(norm: str, suite: AttackSuite, masked: bool, randomized: bool, seed: int = 0,
                    transfer: Sequence[Attack] = (), broken_gradients: bool = False,
                    num_classes: int = 10) -> dict[str, Any]:
    """The attack roles.

    ``one_step``, ``naive``, ``adaptive`` (list) run side by side, then the ``cascade`` (list:
    APGD-CE, APGD-T, FMN) and ``black_box`` (list) on the survivors. The DLR loss needs the third
    largest logit (targeted: the fourth); with fewer classes APGD takes the margin loss instead.
    """
    factor = max(1, suite.escalation) if broken_gradients else 1

    def adapt(attack: Attack) -> Attack:
        """Route a gradient attack around declared non-differentiable modules and randomness."""
        attack = BPDA(attack) if masked else attack
        return EOT(attack, samples=suite.eot_samples) if randomized else attack

    adaptive: Attack = PGD(norm=norm, steps=suite.steps, loss="margin", restarts=suite.restarts, seed=seed)
    wrapped: list[Attack] = [adaptive]
    if masked:
        wrapped.append(BPDA(PGD(norm=norm, steps=suite.steps, loss="margin", seed=seed)))
    if randomized:
        wrapped.append(EOT(wrapped[-1], samples=suite.eot_samples))
    cascade: list[Attack] = []
    if suite.apgd_steps:
        cascade.append(adapt(APGD(norm=norm, steps=suite.apgd_steps, loss="ce", seed=seed)))
        if suite.apgd_targets:
            # randomized models: EOT's expected loss needs a loss comparable across targets (AutoAttack's
            # rand version runs untargeted APGD-DLR there)
            dlr = num_classes >= (3 if randomized else 4)
            targeted = APGD(norm=norm, steps=suite.apgd_steps if randomized else suite.apgd_targeted_steps,
                            loss="dlr" if dlr else "margin", targets=0 if randomized else suite.apgd_targets,
                            seed=seed)
            cascade.append(adapt(targeted))
    if suite.min_norm_steps and not randomized:
        cascade.append(BPDA(FMN(norm=norm, steps=suite.min_norm_steps, seed=seed)) if masked else
                       FMN(norm=norm, steps=suite.min_norm_steps, seed=seed))
    black: list[Attack] = []
    if suite.random_samples:
        black.append(RandomSampling(norm=norm, samples=suite.random_samples * factor, seed=seed))
    if suite.square_queries and norm == "linf":
        black.append(Square(norm=norm, n_queries=suite.square_queries * factor, seed=seed))
    if suite.rays_queries and norm == "linf" and broken_gradients:
        black.append(RayS(norm=norm, queries=suite.rays_queries * factor, seed=seed))
    black.extend(transfer)
    return {
        "one_step": FGSM(norm=norm),
        "naive": PGD(norm=norm, steps=suite.steps, loss="ce", seed=seed),
        "adaptive": wrapped,
        "cascade": cascade,
        "black_box": black,
    }


def _role_names(roles: dict[str, Any]) -> dict[str, Any]:
    return {
        "one_step": roles["one_step"].name, "naive": roles["naive"].name,
        "adaptive": [a.name for a in roles["adaptive"]], "cascade": [a.name for a in roles["cascade"]],
        "black_box": [a.name for a in roles["black_box"]],
    }


def audit_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    norm: str = "linf",
    name: str = "model",
    source: str = "",
    suite: AttackSuite | None = None,
    thresholds: MaskingThresholds | None = None,
    transfer: Sequence[Attack] = (),
    batch_size: int = 500,
    check_samples: int = 200,
    keep_examples: int = 8,
    seed: int = 0,
) -> ModelAudit:
    """Audit one model on ``(x, y)`` (see module doc). The model is used as it is."""
    suite = suite or AttackSuite()
    thresholds = thresholds or MaskingThresholds()
    eps = sorted(float(e) for e in eps)
    start = time.perf_counter()
    n = x.shape[0]
    checks: list[Check] = model_checks(model, x, y, thresholds, fd_samples=check_samples, seed=seed)
    by_name = {c.name: c for c in checks}
    randomized = not by_name["randomized_outputs"].passed
    masked = bool(masked_modules(model))
    margin_zero = (by_name["zero_gradients"].evidence["margin"]["zero"] or 0.0) > thresholds.zero_gradient_fraction
    # gradients unusable and no declared module for BPDA to repair them: gradient-free attacks lead
    broken = not masked and (margin_zero or not by_name["gradient_mismatch"].passed
                             or not by_name["inference_time_optimisation"].passed)
    with torch.inference_mode(False), torch.no_grad():
        num_classes = int(model(x[:1]).shape[1])
    roles = default_attacks(norm, suite, masked, randomized, seed, transfer, broken_gradients=broken,
                            num_classes=num_classes)
    white = [roles["one_step"], roles["naive"], *roles["adaptive"]]
    check_attacks(white, eps)

    counts, examples = robustness_counts(model, x, y, white, eps, batch_size, cascade=False,
                                         keep_examples=keep_examples)
    clean = int(counts.clean) / n
    results = [
        {"attack": a.name, "eps": e, "robust_accuracy": int(counts.robust[i, j]) / n, "stage": "white_box"}
        for j, e in enumerate(eps) for i, a in enumerate(white)
    ]
    white_worst = {e: int(counts.worst[j]) / n for j, e in enumerate(eps)}
    later = [*roles["cascade"], *roles["black_box"]]
    after: dict[str, dict[float, float]] = {a.name: dict(white_worst) for a in later}
    worst = dict(white_worst)
    alive = examples["robust"]
    survivors = torch.stack(list(alive.values())).any(0).nonzero().squeeze(1)
    if later and survivors.numel():
        sub = {key: mask[survivors] for key, mask in alive.items()}
        bb, found = robustness_counts(model, x[survivors], y[survivors], later, eps, batch_size, cascade=True,
                                      alive=sub)
        for i, a in enumerate(later):
            after[a.name] = {e: int(bb.robust[i, j]) / n for j, e in enumerate(eps)}
        worst = {e: int(bb.worst[j]) / n for j, e in enumerate(eps)}
        for key, mask in alive.items():  # per sample: robust under every attack
            mask[survivors] = found["robust"][key]
        for attack_name, by_eps in found["fooled"].items():  # back onto every input
            examples["fooled"][attack_name] = {key: _scatter(mask, survivors, n, False) for key, mask in by_eps.items()}
        for attack_name, norms in found["min_norm"].items():
            examples["min_norm"][attack_name] = _scatter(norms, survivors, n, float("inf"))
    for a in later:
        results += [{"attack": a.name, "eps": e, "robust_accuracy": after[a.name][e], "stage": "after_white_box"}
                    for e in eps]
    gradient_worst = {e: after[roles["cascade"][-1].name][e] for e in eps} if roles["cascade"] else white_worst

    curve = {a.name: attack_curve(results, a.name) for a in white}
    naive, one_step = roles["naive"].name, roles["one_step"].name
    checks.append(check_one_step_vs_iterative(curve[one_step], curve[naive], thresholds, (one_step, naive)))
    checks.append(check_adaptive_vs_naive(curve[naive], {a.name: curve[a.name] for a in roles["adaptive"]},
                                          thresholds, naive))
    checks.append(check_monotone({**curve, "worst": worst}, clean, thresholds))
    random_names = [a.name for a in roles["black_box"] if isinstance(a, RandomSampling)]
    other_names = [a.name for a in roles["black_box"] if not isinstance(a, RandomSampling)]
    if random_names:
        checks.append(check_extra_found("random_sampling_beats_attacks", "Random sampling in the ball",
                                        gradient_worst, after[random_names[-1]], thresholds.random_gap, random_names))
    if other_names:
        base = after[random_names[-1]] if random_names else gradient_worst
        checks.append(check_extra_found("black_box_beats_white_box", "Gradient-free attacks", base,
                                        after[other_names[-1]], thresholds.black_box_gap, other_names))
    xs, ys = x[:check_samples], y[:check_samples]
    main_eps = eps[len(eps) // 2]
    checks.append(check_unbounded(model, xs, ys, roles["naive"], thresholds))
    probe = PGD(eps=main_eps, norm=norm, steps=suite.steps, loss="margin", seed=seed)
    checks.append(check_incomplete_optimisation(model, xs, ys, probe, thresholds))
    checks.append(check_silent_success(model, xs, ys, probe, thresholds))

    return ModelAudit(
        name=name, source=source, norm=norm, eps=eps, num_samples=n, clean_accuracy=clean, results=results,
        worst_case={eps_key(e): worst[e] for e in eps}, gradient_masking=verdict(checks),
        roles=_role_names(roles), seconds=round(time.perf_counter() - start, 2), examples=examples,
        per_sample=_per_sample(examples),
    )


def _scatter(values: torch.Tensor, where: torch.Tensor, n: int, fill: bool | float) -> torch.Tensor:
    """``values`` of the inputs at ``where`` placed among ``n``; ``fill`` for the others."""
    return torch.full((n,), fill, dtype=values.dtype, device=where.device).index_copy(0, where, values.to(where.device))


def _per_sample(examples: dict[str, Any]) -> dict[str, Any]:
    """Plain lists per input: correct, robust per eps, fooled by attack per eps, minimum norms."""
    return {
        "clean_correct": examples["clean_correct"].tolist(),
        "robust": {key: mask.tolist() for key, mask in examples["robust"].items()},
        "fooled_by": {name: {key: m.tolist() for key, m in by_eps.items()}
                      for name, by_eps in examples["fooled"].items()},
        "min_norm": {name: [None if not math.isfinite(v) else round(v, 6) for v in norms.tolist()]
                     for name, norms in examples["min_norm"].items()},
    }


def run_audit(
    models: Sequence[ModelSpec],
    data: Any,
    eps: Sequence[float],
    norm: str = "linf",
    split: str = "test",
    num_samples: int = 1000,
    output_dir: str | Path | None = None,
    suite: AttackSuite | None = None,
    thresholds: MaskingThresholds | None = None,
    transfer: Sequence[Attack] = (),
    batch_size: int = 500,
    device: str = "auto",
    seed: int = 0,
    tensorboard: bool = True,
    allow_probabilities: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[list[ModelAudit], dict[str, Path]]:
    """Audit every model on a fixed, seeded subset of ``data``'s ``split`` and write the report."""
    from lit_defense import __version__
    from lit_defense.data import fixed_subset, fixed_subset_indices
    from lit_defense.report import write_report

    if not models:
        raise ConfigError("give at least one model to audit (--checkpoints PATH ... or `models:` in the config).")
    names = [m.display_name() for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique (they name report rows and plots), got {names}; set `name:`.")
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}.")
    check_attacks([PGD(norm=norm)], eps)
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}.")
    out = Path(output_dir) if output_dir else Path("runs") / "audit" / time.strftime("%Y%m%d-%H%M%S")
    if (out / "report.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a report; choose another --output_dir or pass --overwrite true.")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)

    data.prepare_data()
    data.setup("test" if split == "test" else "validate")
    dataset = getattr(data, "test_set" if split == "test" else "val_set", None)
    if dataset is None:
        loader = data.test_dataloader() if split == "test" else data.val_dataloader()
        dataset = loader.dataset
    x, y = fixed_subset(dataset, num_samples, seed)
    samples = {"index": fixed_subset_indices(len(dataset), num_samples, seed), "label": y.tolist()}
    x, y = x.to(dev), y.to(dev)
    num_classes = int(getattr(data, "num_classes", int(y.max()) + 1))

    loaded = []
    for spec, name in zip(models, names, strict=True):  # load and check all before the long part
        model = load_model(spec).to(dev)
        model.requires_grad_(False)  # our own copy: attacks need input gradients only
        check_model_outputs(model, x, num_classes, name, allow_probabilities)
        loaded.append((spec, name, model))
    audits = []
    for spec, name, model in loaded:
        log(f"audit: {name} ...")
        audit = audit_model(model, x, y, eps, norm, name=name, source=spec.checkpoint or spec.class_path or "",
                            suite=suite, thresholds=thresholds, transfer=transfer, batch_size=batch_size, seed=seed)
        audits.append(audit)
        summary = ", ".join(f"{k} {v:.3f}" for k, v in audit_metrics_summary(audit).items() if v is not None)
        masking = "suspected (" + ", ".join(audit.gradient_masking.triggered) + ")" \
            if audit.gradient_masking.suspected else "not suspected"
        log(f"audit: {name}: {summary}; gradient masking {masking}; {audit.seconds:.0f} s")
    meta = {"version": __version__, "data": getattr(data, "dataset", type(data).__name__), "split": split,
            "num_samples": int(x.shape[0]), "norm": norm, "eps": sorted(float(e) for e in eps), "seed": seed,
            "device": str(dev), "class_names": [str(c) for c in getattr(data, "class_names", ())]}
    paths = write_report(audits, out, meta, tensorboard=tensorboard, samples=samples)
    log(f"audit: report written to {paths['markdown']} and {paths['json']}")
    return audits, paths


def audit_metrics_summary(audit: ModelAudit) -> dict[str, float | None]:
    """Compact numbers for logs: clean, naive and worst-case accuracy at each eps."""
    out: dict[str, float | None] = {"clean": num(audit.clean_accuracy)}
    naive = audit.curve(audit.roles["naive"])
    for e in audit.eps:
        out[f"naive@{eps_key(e)}"] = num(naive.get(e))
        out[f"worst@{eps_key(e)}"] = num(audit.worst_case[eps_key(e)])
    return out


__all__ = [
    "DEFAULT_EPS", "AttackSuite", "ModelAudit", "ModelSpec", "audit_metrics_summary", "audit_model", "check_model_outputs",
    "default_attacks", "load_model", "run_audit",
]
