"""The import rules of docs/architecture.md, checked on the source (every import, lazy ones
inside functions included).

Floors from the bottom: a module may import protossl modules of its own package and of
lower floors, never of a higher floor or of another package on its own floor. The
package root ``protossl/__init__.py`` (the version) is importable from anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "protossl"
FLOORS: list[tuple[str, ...]] = [
    # The utility floor (errors, registry, collectives, atomic files, YAML, run layout) and
    # the preset YAML files.
    ("core", "presets"),
    ("method_config",),  # each method's config section (torch-free: config reads them all)
    ("config",),
    ("data", "objectives", "diagnostics"),  # independent of each other
    ("models",),  # the vMF prototype layer uses objectives' normalizer
    ("methods",),
    ("runs",),  # run folders, outputs, the training checkpoint format
    ("evaluation", "export"),  # export: a run's backbone for timm alone
    ("engine",),  # the trainer
    ("reports",),
    ("sweep", "demo"),
    ("commands",),  # one module per sub-command
    ("cli",),
    ("__main__",),
]
FLOOR_OF = {package: level for level, packages in enumerate(FLOORS) for package in packages}


def _package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0]


def _imported_packages(path: Path) -> set[str]:
    """Top-level protossl packages that ``path`` imports (``protossl`` itself excluded)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "protossl":  # from protossl import cli
                names = [f"protossl.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "protossl" and len(parts) > 1 and parts[1] != "__version__":
                found.add(parts[1])
    return found


SOURCES = sorted(p for p in ROOT.rglob("*.py") if p != ROOT / "__init__.py")


def test_every_package_has_a_floor() -> None:
    packages = {_package_of(path) for path in SOURCES}
    assert packages <= set(FLOOR_OF), sorted(packages - set(FLOOR_OF))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    package = _package_of(path)
    level = FLOOR_OF[package]
    wrong = sorted(
        target
        for target in _imported_packages(path) - {package}
        if FLOOR_OF.get(target, len(FLOORS)) >= level
    )
    assert not wrong, f"{path.relative_to(ROOT)} ({package}, floor {level}) imports {wrong}"


def test_the_checker_sees_lazy_and_relative_forms(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from protossl.engine.trainer import Trainer\n"
        "import protossl.reports.figures\nfrom protossl import cli\n"
    )
    assert _imported_packages(probe) == {"engine", "reports", "cli"}


def test_the_command_line_lists_every_checkpoint_layout() -> None:
    from protossl.commands.common import CHECKPOINT_FORMATS
    from protossl.diagnostics.checkpoints import FORMAT_CHOICES

    assert list(CHECKPOINT_FORMATS) == list(FORMAT_CHOICES)


def test_parsing_a_command_line_imports_no_torch() -> None:
    # Start-up stays fast, and Ctrl-C during it is clean (cli.main): torch comes later.
    import subprocess
    import sys

    code = "import sys, protossl.cli; protossl.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
