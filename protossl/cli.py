"""The ``protossl`` command.

Each sub-command is a module of :mod:`protossl.commands`; user errors become one line on stderr
and exit status 2 (no traceback). ``--json`` output is one JSON object on
stdout; everything meant for people goes to stderr.

Example:
    $ protossl train --preset dino-kp --data digits --out runs/dino-kp --epochs 5
    $ protossl analyze runs/dino-kp --json
    $ protossl eval runs/dino-kp --data digits --json
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from protossl.commands import COMMANDS
from protossl.commands.common import PROG
from protossl.core.errors import UserError, one_line


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    from protossl import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def torch_distributed_errors() -> tuple[type[BaseException], ...]:
    """The exceptions torch.distributed raises when a peer process dies or times out."""
    import torch.distributed as dist

    from protossl.core.distributed import CollectiveError

    found = (CollectiveError,) + tuple(
        err
        for name in ("DistError", "DistBackendError", "DistNetworkError")
        if isinstance(err := getattr(dist, name, None), type)
    )
    return found


# The modules each command needs, imported before the command runs (see main).
COMMAND_MODULES = {command.NAME: command.NEEDS for command in COMMANDS}
INTERRUPTED = f"{PROG}: interrupted"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def exit_at_once(signum: int, frame: object) -> None:
    """SIGINT handler while nothing has been written: leave now, exit status 130.

    Raising KeyboardInterrupt in the middle of ``import torch`` leaves torch half
    imported, and the next import of it prints pages of tracebacks; exiting from the
    handler leaves nothing half-done, because nothing has started yet.
    """
    os.write(2, f"{INTERRUPTED} before anything was written\n".encode())
    os._exit(130)


def _os_error_line(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in _DISK_FULL:
        return one_line(
            f"{PROG}: error: no space left to write{where} ({exc.strerror or exc}); what was "
            "written before is intact (checkpoints are replaced atomically): free space, "
            "then run the command again (train: with --resume)"
        )
    return one_line(f"{PROG}: error: cannot access{where}: {exc.strerror or exc}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``protossl`` console script.

    Ctrl-C at any point ends with one line and exit status 130: during start-up (argument
    parsing and the heavy imports) the process leaves at once; once the command runs,
    the interrupt unwinds it (atomic writes clean up after themselves), so the last
    checkpoint is always intact. A second Ctrl-C while the first is reported is ignored.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, exit_at_once) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        for module in COMMAND_MODULES.get(args.command, ()):
            importlib.import_module(module)
        if in_main_thread:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only folder, a full disk, --out naming a file
        print(_os_error_line(exc), file=sys.stderr)
        return 2
    except torch_distributed_errors() as exc:
        # Another training process died or stopped answering (torchrun): no hang, and
        # the last checkpoint (written atomically by rank 0) is intact.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"{PROG}: error: a training process stopped ({first[:200]}); the last checkpoint "
            "is kept: continue with --resume",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: same answer
        hint = " (continue with --resume)" if args.command == "train" else ""
        print(f"{INTERRUPTED}; every checkpoint written so far is intact{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
