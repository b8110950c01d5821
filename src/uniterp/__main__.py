"""``python -m uniterp ...``: the same as the ``uniterp`` command (see `uniterp.cli`)."""

from .cli import main

raise SystemExit(main())
