"""The audit's attacks: their settings (``AttackSuite``) and the roles they play."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
)
from lit_defense.errors import ConfigError
from lit_defense.roles import AttackRoles

# The default eps grid of ``lit-defense audit`` (L-inf on [0, 1] pixels, Fashion-MNIST/MNIST scale).
DEFAULT_EPS = (0.05, 0.1, 0.2)


def epoch_attacks() -> list[Attack]:
    """The per-epoch cascade of ``AdversarialEvaluation``: FGSM, APGD-5 on the CE, APGD-10 on the margin.

    FGSM and APGD-CE are the naive view (more steps do not help a CE attack whose gradient is
    zero); APGD on the margin loss sees through saturated softmax. As a cascade, each attack only
    runs on the points the earlier ones missed. ``benchmarks/callback_suite.py`` chose it (closest
    to the audit's worst case for its time; docs: "Contributing", benchmarks).
    """
    return [FGSM(), APGD(steps=5, loss="ce"), APGD(steps=10, loss="margin")]


@dataclass
class AttackSuite:
    """Settings of the default attacks.

    Args:
        steps: PGD steps of the white-box stage (the incompleteness check doubles them).
        eot_samples: EOT samples per gradient for randomized models.
        square_queries: Square attack queries per input at L-inf (0 disables Square at both norms),
            ``square_proposals`` of them per step.
        square_proposals: at L-inf, Square's candidates per step of its one search, scored in one
            call (``Square(proposals=...)``): its queries in ``1 / square_proposals`` of the rounds.
            On 500 test images at eps 0.1 (``benchmarks/square_chains.py``,
            ``benchmarks/results/square_proposals.json``), 500 steps of 4 (2000 queries) fooled 387 of
            the teacher's inputs and 52 of the adversarially trained model's, one search of 1000
            queries (1000 steps) 373 and 52; 500 steps of 2 (1000 queries) 373 and 49, of 3 (1500)
            383 and 50. Hence 2000 queries in 4 proposals by default: as strong as 1000 queries
            one at a time or stronger on both, in half the rounds, for twice the rows.
        square_chains: Square runs as this many independent chains per input, each with
            ``1 / square_chains`` of the queries, side by side: the same queries in fewer rounds,
            but weaker. On 500 test images at eps 0.1 (``benchmarks/square_chains.py``,
            ``benchmarks/results/square_chains.json``) one search of 1000 queries fooled 373 of the
            teacher's inputs, 2 chains 357, 4 chains 330 (McNemar p < 0.001); so one search, with
            several proposals per step instead (``square_proposals``; not with chains > 1).
        square_queries_l2: Square's queries per input at L2 (AutoAttack's 5000; 0 disables it at
            L2): fewer queries missed inputs AutoAttack's Square fooled
            (``benchmarks/results/vs_autoattack_l2_1.0.json``).
        random_samples: random points of the ball per input (0 disables random sampling).
        restarts: PGD restarts of the adaptive (margin-loss) attack.
        apgd_steps: APGD-CE iterations in the cascade (0 disables APGD-CE and APGD-T).
        apgd_targets: target classes of APGD-T (AutoAttack: all 9 of 10 classes; 0 disables it).
            4, ranked by ``apgd_ranking``: the inputs AutoAttack's 9 targets fool fall to the first
            few (``benchmarks/results/vs_autoattack_linf_0.1_before.json``).
        apgd_ranking: how APGD-T ranks its targets: ``mixed`` (the two below interleaved: with 4
            targets, the first two of each), ``linear`` (nearest first-order boundary, MALT) or
            ``logit`` (most likely wrong class, AutoAttack).
        apgd_targeted_steps: APGD-T iterations per target in the cascade (AutoAttack: 100); the
            inputs FMN places near eps get 100 and every target in the refine stage.
        min_norm_steps: FMN iterations (0 disables the minimum-norm attack).
        min_norm_targets: at L2, FMN runs once per target class, this many of the likeliest
            (AutoAttack's FAB-T plays this role), and keeps each input's smallest norm: the untargeted
            FMN can place an input far beyond its boundary at L2. At L-inf FMN stays untargeted
            (refine's APGD-T over every class takes the near inputs). 0: untargeted at L2 too.
            Evidence: ``benchmarks/results/vs_autoattack_l2_1.0.json``, ``vs_autoattack_linf_0.1.json``.
        rays_queries: RayS queries per input (L-inf), run when the gradients are unusable;
            multiplied by ``escalation`` like the other gradient-free budgets (0 disables it).
        escalation: when the model checks find the gradients themselves unusable (zero margin
            gradients, gradients that disagree with finite differences, optimisation inside the
            forward pass) and the model declares no module BPDA could route around, the
            gradient-free attacks are the main line: their query and sample budgets are
            multiplied by this.
        black_box_sample: the gradient-free attacks (random sampling, Square, RayS, extra attacks) first
            run on a seeded sample of the inputs the gradient attacks left robust, just large
            enough that a rate at the black-box checks' thresholds would show in it with
            probability 1 - alpha (``spending.black_box_sample_size``). They go on to the other
            survivors when the sample yields an adversarial point, and run on all of them at once
            when a model check failed (masked, randomized or unusable gradients), but not for a
            saturated softmax and zero cross-entropy gradients alone, which the margin attacks see
            through (``ModelProbe.black_box_sampled``). ``False``: always on all survivors. On a
            GPU the device's width (``lit_defense.width.Width.sample_black_box``) puts them on all
            survivors at once: there the sample's second pass costs rounds and its size nothing.
        far_margin: the gradient cascade (APGD-CE, APGD-T, FMN) skips the inputs the white-box
            attacks left with more than this fraction of their clean logit margin (far from the
            boundary; A3's discarding, Liu et al. 2022). Never when a mechanism check failed, but
            for the two that concern the cross-entropy alone, a saturated softmax and zero CE
            gradients (``ModelProbe.margins_trusted``). L-inf only: at L2 it skipped inputs
            AutoAttack fooled (``ModelProbe.far_threshold``). 0: none is skipped. Evidence:
            ``benchmarks/results/vs_autoattack_linf_0.1.json``.
        refine_radius: inputs still robust whose minimum-norm (FMN) perturbation is within this
            factor of eps sit near the boundary, where one random start finds an adversarial
            point and another misses it: they get AutoAttack's budget and fresh starts (targeted
            APGD-DLR over every other class with ``apgd_steps`` steps, then a margin PGD with
            ``5 * steps`` steps and ``refine_restarts`` random restarts; another seed). 0 disables it.
        refine_restarts: random restarts of the refining PGD (0 disables the refine stage).
        refine_close_radius: the survivors FMN places within this x eps (closer than
            ``refine_radius``) then get targeted APGD at the top-ranked other class, ``2 *
            refine_restarts`` random starts of ``apgd_steps / 2`` steps (0: not). On an input
            AutoAttack's APGD-T fooled by a logit margin of 0.001 (FMN: 1.022 x eps), 7 starts in
            20 of 50 steps found it (benchmarks/results/vs_autoattack_robust_distilled.json).
        adequacy_samples: inputs robust at the middle eps that get the binarization test, the
            positive control of ``lit_defense.adequacy``: the same attacks must find an adversarial
            example that surely exists (its result is the check ``attack_inadequate``). On by
            default, with 20 inputs (about 11 s a model on the quick profile's CNNs on 2 CPU
            cores); ``--suite.adequacy_samples 0`` turns it off.
    """

    steps: int = 20
    eot_samples: int = 10
    square_queries: int = 2000
    square_queries_l2: int = 5000
    square_proposals: int = 4
    square_chains: int = 1
    random_samples: int = 100
    restarts: int = 1
    apgd_steps: int = 100
    apgd_targets: int = 4
    apgd_ranking: str = "mixed"
    apgd_targeted_steps: int = 50
    min_norm_steps: int = 100
    min_norm_targets: int = 9
    rays_queries: int = 1000
    escalation: int = 5
    black_box_sample: bool = True
    far_margin: float = 0.5
    refine_radius: float = 1.1
    refine_restarts: int = 5
    refine_close_radius: float = 1.05
    adequacy_samples: int = 20


# the refine attack that runs only on the survivors within ``refine_close_radius`` x eps
REFINE_CLOSE = "refine_close_apgd_t1"


def _dlr_or_margin(num_classes: int, targeted: bool) -> str:
    """APGD's loss: the DLR needs the third largest logit (targeted: the fourth), else the margin."""
    return "dlr" if num_classes >= (4 if targeted else 3) else "margin"


def default_attacks(norm: str, suite: AttackSuite, masked: bool, randomized: bool, seed: int = 0,
                    extra: Sequence[Attack] = (), broken_gradients: bool = False,
                    num_classes: int = 10) -> AttackRoles[Attack]:
    """The attacks by role (``AttackRoles``).

    ``one_step``, ``naive``, ``adaptive`` run side by side, then the ``cascade`` (APGD-CE, APGD-T,
    FMN) and ``black_box`` (the gradient-free attacks, then the ``extra`` attacks a user adds) on
    the survivors; ``refine`` on the survivors near the boundary (FMN norm within ``refine_radius``
    x eps). The DLR loss needs the third
    largest logit (targeted: the fourth); with fewer classes APGD takes the margin loss instead.

    A randomized model is judged in expectation (``lit_defense.judge``), and so are the attacks'
    own decisions: the adaptive margin PGD without EOT returns its last iterate instead of stopping
    at the first point one draw misclassifies, and random sampling and Square judge each point over
    ``eot_samples`` draws. The naive PGD-CE stays as a naive evaluation runs it; its point is
    judged in expectation like every other.
    """
    factor = max(1, suite.escalation) if broken_gradients else 1

    def adapt(attack: Attack) -> Attack:
        """Route a gradient attack around declared non-differentiable modules and randomness."""
        attack = BPDA(attack) if masked else attack
        return EOT(attack, samples=suite.eot_samples) if randomized else attack

    # a randomized model: no early stop on one lucky draw (the last iterate climbs the expected loss)
    lucky = {"keep_first_adversarial": False} if randomized else {}
    draws = {"draws": max(1, suite.eot_samples)} if randomized else {}
    adaptive: Attack = PGD(norm=norm, steps=suite.steps, loss="margin", restarts=suite.restarts, seed=seed, **lucky)
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
            targeted = APGD(norm=norm, steps=suite.apgd_steps if randomized else suite.apgd_targeted_steps,
                            loss=_dlr_or_margin(num_classes, targeted=not randomized),
                            targets=0 if randomized else suite.apgd_targets,
                            ranking=suite.apgd_ranking, seed=seed)
            cascade.append(adapt(targeted))
    if suite.min_norm_steps and not randomized:
        fmn = FMN(norm=norm, steps=suite.min_norm_steps, seed=seed,
                  targets=min(suite.min_norm_targets, num_classes - 1) if norm == "l2" and num_classes > 2 else 0)
        cascade.append(BPDA(fmn) if masked else fmn)
    refine: list[Attack] = []
    if suite.refine_radius > 0 and suite.refine_restarts and suite.min_norm_steps and not randomized:
        # the few inputs FMN places near eps get AutoAttack's own budget: targeted APGD over every
        # other class, full steps (such inputs fall to one random start and not to another)
        if suite.apgd_steps and num_classes >= 3:
            refine.append(adapt(APGD(norm=norm, steps=suite.apgd_steps, loss=_dlr_or_margin(num_classes, targeted=True),
                                     targets=num_classes - 1, ranking=suite.apgd_ranking, seed=seed + 1,
                                     name="refine_apgd_t")))
        refine.append(adapt(PGD(norm=norm, steps=suite.steps * 5, loss="margin", restarts=suite.refine_restarts,
                                random_start=True, seed=seed + 1, name="refine_pgd_margin")))
        # then the closest survivors (``refine_close_radius``): many short starts at the top-ranked
        # other class, where one start in 2.5 (100 steps) or 3 (50 steps) found the point of an
        # input AutoAttack's APGD-T fooled by a logit margin of 0.001 (``RefineStage`` runs it on
        # those inputs only; half the steps, twice the starts: half the rounds for the same rows)
        if suite.refine_close_radius > 0 and suite.apgd_steps and num_classes >= 3:
            refine.append(adapt(APGD(norm=norm, steps=max(2, suite.apgd_steps // 2),
                                     loss=_dlr_or_margin(num_classes, targeted=True), targets=1,
                                     restarts=2 * suite.refine_restarts, ranking=suite.apgd_ranking,
                                     seed=seed + 2, name=REFINE_CLOSE)))
    black: list[Attack] = []
    if suite.random_samples:
        black.append(RandomSampling(norm=norm, samples=suite.random_samples * factor, seed=seed, **draws))
    queries = {"linf": suite.square_queries, "l2": suite.square_queries_l2}.get(norm, 0) if suite.square_queries else 0
    if queries:
        proposals = max(1, suite.square_proposals) if norm == "linf" else 1  # measured at L-inf only
        if proposals > 1 and suite.square_chains > 1:
            raise ConfigError(f"--suite.square_chains {suite.square_chains} needs --suite.square_proposals 1 "
                              f"(got {suite.square_proposals}): Square runs several chains or one search with "
                              "several proposals per step, not both.")
        black.append(Square(norm=norm, n_queries=queries * factor, chains=max(1, suite.square_chains),
                            proposals=proposals, seed=seed, **draws))
    if suite.rays_queries and norm == "linf" and broken_gradients:
        black.append(RayS(norm=norm, queries=suite.rays_queries * factor, seed=seed))
    black.extend(extra)
    # the naive attack stays as a naive evaluation runs it (it does not know the model is random)
    return AttackRoles(FGSM(norm=norm), PGD(norm=norm, steps=suite.steps, loss="ce", seed=seed), wrapped,
                       cascade, black, refine)


__all__ = ["DEFAULT_EPS", "REFINE_CLOSE", "AttackSuite", "default_attacks"]
