"""``python -m protossl`` is the ``protossl`` command."""

import os
import signal


def _exit_at_once(signum: int, frame: object) -> None:
    # Ctrl-C outside cli.main (before it starts, or after it returns): one line, exit 130.
    os.write(2, b"protossl: interrupted\n")
    os._exit(130)


signal.signal(signal.SIGINT, _exit_at_once)

from protossl.cli import main  # noqa: E402  (after the handler: an early Ctrl-C is clean)

raise SystemExit(main())
