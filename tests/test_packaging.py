"""The installable package: the wheel carries every shipped recipe and claims no generic top-level name."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_every_recipe_and_no_generic_top_level_module(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("lit_defense-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert len(recipes) >= 20
    missing = [r for r in recipes if f"lit_defense/recipes/{r}" not in names]
    assert not missing, missing
    top_level = {n.split("/", 1)[0] for n in names if "/" in n and ".dist-info" not in n}
    assert top_level == {"lit_defense", "lit_defense_callbacks"}, top_level
    assert "lit_defense_callbacks/adversarial_evaluation.py" in names
    # every module of the core, subpackages included (setuptools' package list is explicit)
    sources = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "lit_defense").rglob("*.py"))
    assert len(sources) > 40
    unshipped = [m for m in sources if m not in names]
    assert not unshipped, f"pyproject's [tool.setuptools] packages misses: {unshipped}"


def test_the_pipeline_finds_its_recipes_through_the_package():
    from lit_defense.pipeline import CONFIGS, STAGES

    for stage in STAGES:
        assert (CONFIGS / stage.config).is_file(), stage.config
