"""``python -m uplion``: the same as the ``uplion`` command."""

from uplion.cli import main

main()
