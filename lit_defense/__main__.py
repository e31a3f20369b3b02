"""``python -m lit_defense``: the same as the ``lit-defense`` command."""

import sys

from lit_defense.cli import main

if __name__ == "__main__":
    sys.exit(main())
