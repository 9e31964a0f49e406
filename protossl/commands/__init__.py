"""One module per ``protossl`` sub-command: its flags (``add_parser``), the modules it
needs (``NEEDS``) and ``run(args) -> exit status``, which parses nothing and calls the
library. ``protossl.cli`` builds the parser from :data:`COMMANDS` and handles errors.
A new command is one module here and one entry in :data:`COMMANDS`.
"""

from __future__ import annotations

from types import ModuleType

from protossl.commands import (
    analyze,
    dedupe,
    demo,
    embed,
    evaluate,
    export,
    presets,
    report,
    sweep,
    train,
)

__all__ = ["COMMANDS"]

# Order of the help text.
COMMANDS: tuple[ModuleType, ...] = (
    train,
    analyze,
    dedupe,
    evaluate,
    embed,
    export,
    sweep,
    report,
    presets,
    demo,
)
