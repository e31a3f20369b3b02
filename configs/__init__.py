"""The shipped LightningCLI recipes, installed as the package data ``lit_defense.recipes``."""
