"""One example type and builder (the audit and the per-epoch evaluation), one drawing."""

from __future__ import annotations

import matplotlib.colors
import torch

from lit_defense.attacks import FGSM, PGD
from lit_defense.evaluation import robustness_counts
from lit_defense.examples import build_examples
from lit_defense.plots import draw_examples
from lit_defense.results import Examples, eps_key


def test_the_examples_are_the_first_fooling_attack_s_points(trained):
    """Per eps: a wrong prediction exactly where the outcome says not robust, inside the ball, clean elsewhere."""
    model, x, y = trained
    x, y, eps = x[:24], y[:24], [0.05, 0.2]
    attacks = [FGSM(), PGD(steps=5, loss="margin")]
    _, out = robustness_counts(model, x, y, attacks, eps, keep_examples=10)
    ex = out.examples
    assert isinstance(ex, Examples) and len(ex) == 10 and torch.equal(ex.x, x[:10])
    for e in eps:
        key = eps_key(e)
        robust = out.robust[key][:10]
        adv, pred = ex.adv[key], ex.pred[key]
        assert torch.equal(pred != y[:10], ~robust), key
        assert (adv - x[:10]).abs().amax() <= e + 1e-6
        assert torch.equal(adv[robust], x[:10][robust])
    # the same examples built from the outcome alone (the audit's way, after a sharded run)
    again = build_examples(model, x, y, eps, attacks, out.fooled, out.clean_correct, 10)
    for key in ex.adv:
        assert torch.equal(again.pred[key], ex.pred[key])


def test_one_drawing_titles_classes_and_marks_wrong_predictions_red():
    x = torch.rand(3, 1, 8, 8)
    ex = Examples(x, torch.tensor([0, 1, 2]), {eps_key(0.1): (x + 0.1).clamp(0, 1)},
                  {eps_key(0.1): torch.tensor([0, 2, 2])})
    names = ["cat", "dog", "owl"]
    fig = draw_examples([("teacher", ex, 0.1)], names, perturbation=True)
    axes = fig.axes
    assert len(axes) == 9  # clean / adversarial / perturbation rows, three columns
    assert [a.get_title() for a in axes[:3]] == names
    adv_titles = axes[3:6]
    assert [a.get_title() for a in adv_titles] == ["cat", "owl", "owl"]
    red = [matplotlib.colors.to_hex(a.title.get_color()) == "#ff0000" for a in adv_titles]
    assert red == [False, True, False]
    assert draw_examples([("empty", None, 0.1)]).axes  # nothing to draw: an empty figure, not an error
