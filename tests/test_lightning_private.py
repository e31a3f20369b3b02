"""Every private Lightning name lit-defense uses still exists in the installed Lightning."""

from __future__ import annotations

import pytest

from lit_defense.lightning_private import PRIVATE, given_hyperparameters, resolve


@pytest.mark.parametrize("dotted", sorted(PRIVATE))
def test_private_lightning_name_still_exists(dotted):
    assert resolve(dotted) is not None, f"Lightning changed {dotted}: {PRIVATE[dotted]}"


def test_resolve_fails_loudly_on_a_missing_name():
    with pytest.raises(AttributeError, match="no '_not_there'"):
        resolve("lightning.pytorch.cli.LightningCLI._not_there")


def test_the_private_names_are_the_ones_the_code_uses():
    import inspect

    import lit_defense.lightning_cli as cli

    source = inspect.getsource(cli)
    for dotted in PRIVATE:
        if dotted.startswith("lightning.pytorch.cli.LightningCLI."):
            assert dotted.rsplit(".", 1)[1] in source, dotted
    assert given_hyperparameters() is not None  # the supported Lightning versions have it
