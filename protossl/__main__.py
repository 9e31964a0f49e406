"""``python -m protossl`` is the ``protossl`` command."""

from protossl.cli import main

raise SystemExit(main())
