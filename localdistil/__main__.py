"""``python -m localdistil``: the command line (see :mod:`localdistil.cli`)."""

from .cli import main

raise SystemExit(main())
