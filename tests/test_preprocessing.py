"""A model that expects other inputs than [0, 1] pixels: `preprocessing` and `bounds` in its entry.

Most torchvision and timm models take inputs normalized by a mean and std. The audit attacks
[0, 1] pixels (eps in pixel units); a model entry says what the model expects, foolbox's way, and
the audit puts it inside the audited model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lit_defense.audit import ModelSpec, load_model
from lit_defense.audit.models import Preprocessed, check_model_outputs
from lit_defense.cli import main
from lit_defense.errors import ConfigError

TESTS = Path(__file__).parent
N = 128
DATA = ["--data.class_path=lit_defense.data.VisionDataModule", "--data.init_args.dataset=synthetic",
        f"--data.init_args.synthetic_test_size={N}", "--data.init_args.synthetic_noise=0.4"]
SUITE = [f"--num_samples={N}", "--eps=[0.05,0.1]", "--suite.steps=5", "--suite.apgd_steps=10",
         "--suite.apgd_targets=2", "--suite.apgd_targeted_steps=10", "--suite.min_norm_steps=10",
         "--suite.square_queries=60", "--suite.random_samples=4", "--suite.rays_queries=50", "--check_samples=64",
         "--suite.adequacy_samples=4", "--tensorboard=false"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A TinyNet trained on 0-255 pixels normalized by mean 127, std 64."""
    sys.path.insert(0, str(TESTS))
    from toy_models import train_tiny_net

    from lit_defense.data import VisionDataModule

    dm = VisionDataModule("synthetic", synthetic_train_size=1024, synthetic_noise=0.4, val_size=64)
    dm.setup("fit")
    x = dm.train_set.images.float() / 255
    net = train_tiny_net((x * 255.0 - 127.0) / 64.0, dm.train_set.labels, epochs=3)
    path = tmp_path_factory.mktemp("pre") / "tiny.pt"
    torch.save(net.state_dict(), path)
    return path


def test_preprocessing_in_the_entry_gives_the_worst_case_of_the_model_wrapped_by_hand(weights, tmp_path):
    config = tmp_path / "audit.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: entry, class_path: toy_models.TinyNet, weights: {weights}, bounds: [0, 255],\n"
        "      preprocessing: {mean: [127], std: [64]}}\n"
        f"  - {{name: by_hand, class_path: toy_models.HandNormalizedTinyNet, weights: {weights}}}\n")
    out = tmp_path / "audit"
    assert main(["audit", "--config", str(config), *DATA, *SUITE, f"--output_dir={out}"]) == 0
    entry, by_hand = json.loads((out / "report.json").read_text())["models"]
    assert entry["clean_accuracy"]["value"] > 0.5  # it is the trained model, fed what it expects
    assert entry["worst_case"] == by_hand["worst_case"]
    assert entry["results"] == by_hand["results"]
    assert entry["gradient_masking"]["state"] == by_hand["gradient_masking"]["state"]
    same = [{k: v for k, v in m["adequacy"].items() if k != "note"} for m in (entry, by_hand)]
    assert same[0] == same[1] and same[0]["valid"] > 0  # the readout's name differs (model.net.4 / net.4)
    per_sample = json.loads((out / "per_sample.json").read_text())
    assert per_sample["models"]["entry"] == per_sample["models"]["by_hand"]


def test_the_entry_s_preprocessing_runs_inside_the_model_on_pixels():
    sys.path.insert(0, str(TESTS))
    spec = ModelSpec(class_path="toy_models.TinyNet", bounds=[0, 255], preprocessing={"mean": [127], "std": [64]})
    model = load_model(spec)
    assert isinstance(model, Preprocessed) and not model.training
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), model.model((x * 255 - 127) / 64))
    three = Preprocessed(torch.nn.Identity(), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    rgb = torch.rand(2, 3, 4, 4)
    assert torch.allclose(three(rgb), (rgb - three.normalize.mean) / three.normalize.std)


@pytest.mark.parametrize("spec, message", [
    (ModelSpec(class_path="toy_models.TinyNet", bounds=[255, 0]), "low < high"),
    (ModelSpec(class_path="toy_models.TinyNet", preprocessing={"mean": [0.5], "std": [0]}), "std must be positive"),
    (ModelSpec(class_path="toy_models.TinyNet", preprocessing={"mean": [1, 2], "std": [1, 2, 3]}), "channels"),
    (ModelSpec(class_path="toy_models.TinyNet", preprocessing={"mean": [0.5], "sd": [0.2]}), "unknown preprocessing"),
])
def test_a_wrong_preprocessing_is_one_clear_error(spec, message):
    sys.path.insert(0, str(TESTS))
    with pytest.raises(ConfigError, match=message):
        load_model(spec)


def test_a_model_that_expected_0_255_pixels_is_refused_with_the_fix_and_an_undertrained_one_is_not():
    """On [0, 1] inputs a model made for 0-255 pixels sees near-black images and predicts one class; on
    the same images as 0-255 pixels it is right: refused, naming `bounds`. A model that predicts one
    class whatever the range (undertrained) is audited as it is."""
    sys.path.insert(0, str(TESTS))
    from toy_models import train_tiny_net

    from lit_defense.data import VisionDataModule

    dm = VisionDataModule("synthetic", synthetic_train_size=1024, synthetic_test_size=64, synthetic_noise=0.4,
                          val_size=64)
    dm.setup("fit")
    dm.setup("test")
    net = train_tiny_net(dm.train_set.images.float() / 255, dm.train_set.labels, epochs=2).eval()

    class Expects255(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x / 255)

    x, y = dm.test_set.images.float() / 255, dm.test_set.labels
    with torch.no_grad():
        assert Expects255()(x).argmax(1).unique().numel() == 1  # what the refusal is about
    with pytest.raises(ConfigError, match=r"predicts class \d+ for all 64 .* as 0-255 pixels .* `bounds: \[0, 255\]`"):
        check_model_outputs(Expects255(), x, 10, "mine", y=y)
    check_model_outputs(net, x, 10, "mine", y=y)  # fed what it expects: fine

    class OneClass(torch.nn.Module):  # the same logits for every input, whatever its range
        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)) * 0 + 5.0, *[x.mean((1, 2, 3)) * 0 for _ in range(9)]], 1)

    check_model_outputs(OneClass(), x, 10, "undertrained", y=y)


def test_the_readme_s_torchvision_entry_loads_as_a_model_of_pixels():
    """The README's "Audit any model" entry (its weights file left out): a torchvision ResNet-18 behind
    ImageNet's normalization, taking [0, 1] pixels."""
    import yaml

    readme = (TESTS.parent / "README.md").read_text()
    block = readme.split("# my_audit.yaml")[1].split("\n", 1)[1].split("```")[0]
    (entry,) = yaml.safe_load(block)["models"]
    assert entry["class_path"] == "torchvision.models.resnet18"
    entry.pop("weights")
    model = load_model(ModelSpec.from_dict(entry))
    assert isinstance(model, Preprocessed) and model.normalize.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10)
