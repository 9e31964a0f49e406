"""YAML read with limits: a small hostile file can neither exhaust memory nor crash a command.

``yaml.safe_load`` never runs code, but three things in a short file still hurt: alias
expansion (the "billion laughs": nine lines whose data, once walked, is 10^9 items),
nesting deep enough to overflow Python's recursion, and scalars that PyYAML turns into
a ``ValueError`` instead of a ``YAMLError`` (an integer of 5,000 digits). Every YAML that
protossl reads (presets, ``--config``, ``--set`` values, sweep files, a run's
``config.yaml``) goes through :func:`load_yaml`, which:

* refuses a text longer than :data:`MAX_YAML_CHARS`;
* counts the document's nodes *with every alias expanded* (each alias counts its whole
  subtree) and refuses more than :data:`MAX_YAML_NODES` before anything is constructed;
* turns every failure into a one-line :class:`~protossl.core.errors.UserError`.

Example:
    >>> load_yaml("model: {num_prototypes: 1024}", "config")
    {'model': {'num_prototypes': 1024}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from protossl.core.errors import UserError

__all__ = ["MAX_YAML_CHARS", "MAX_YAML_NODES", "load_yaml", "load_yaml_file"]

# A configuration or sweep is a few kB; 1 MiB is generous and still cheap to parse.
MAX_YAML_CHARS = 1 << 20
# Nodes after alias expansion: a full resolved config has ~150; a big sweep a few thousand.
MAX_YAML_NODES = 100_000


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Node count with aliases expanded, computed without recursion and stopped at ``limit``.

    A node reached twice (an alias) counts its subtree each time, which is what walking
    the loaded data (merging, dumping, comparing) costs; sizes of shared subtrees are
    memoized so the count itself stays linear in the document.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes and not children_done:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if not children_done:
            if key in on_path:  # a recursive alias (&a [*a]): infinite once expanded
                return limit + 1
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        on_path.discard(key)
        total = 1 + sum(sizes.get(id(child), 0) for child in children)
        sizes[key] = min(total, limit + 1)
    return sizes[id(root)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_yaml(text: str, what: str) -> Any:
    """Parse one YAML document with the limits above; ``what`` names it in messages.

    Raises:
        UserError: too long, too many nodes once aliases are expanded, nested too deeply,
            or not valid YAML.
    """
    if len(text) > MAX_YAML_CHARS:
        raise UserError(
            f"{what} is {len(text):,} characters, more than the {MAX_YAML_CHARS:,} protossl "
            "reads; is it the right file?"
        )
    try:
        # The reader refuses control characters while it is being built: inside the try.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML: {_first_line(exc)}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, MAX_YAML_NODES)
        if size > MAX_YAML_NODES:
            raise UserError(
                f"{what} expands to more than {MAX_YAML_NODES:,} values once its aliases "
                "(*name) are resolved; write the values out or use fewer aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML: {_first_line(exc)}") from None
    except RecursionError:
        raise UserError(f"{what} is nested too deeply to read") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's scalar constructors (an int of 5,000 digits, a bad timestamp).
        raise UserError(f"{what} holds a value YAML cannot represent here ({exc})") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, what: str) -> Any:
    """Read and parse a YAML file under the same limits (size checked before reading)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > 4 * MAX_YAML_CHARS:  # UTF-8: at most 4 bytes a character
            raise UserError(
                f"{what} {path} is {size:,} bytes, more than protossl reads for a YAML file"
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"{what} {path} could not be read ({exc.strerror or exc})") from None
    return load_yaml(text, f"{what} {path}")
