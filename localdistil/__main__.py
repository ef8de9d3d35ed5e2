"""``python -m localdistil``: the command line (see :mod:`localdistil.cli`)."""

from localdistil.cli import main

raise SystemExit(main())
