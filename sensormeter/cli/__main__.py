"""``python -m sensormeter.cli``: the same as the ``sensormeter`` command."""

from . import main

main()
