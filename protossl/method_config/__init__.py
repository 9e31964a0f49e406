"""Each method's own config section, defined here and registered under its YAML key.

A method's settings (``ibot:``, ``msn:``, ``swav:``) belong to the method, but
:mod:`protossl.config` must know every section to read a YAML file or a ``--set``,
and it sits below ``methods/`` (which imports torch; parsing a command line must
not). So each section is a small torch-free module here, one per method, that
registers its dataclass in :data:`SECTIONS` with its checks; the method imports its
section from here (``methods/ibot.py`` -> ``method_config/ibot.py``), and config
imports this package, so a :class:`~protossl.config.Config` always has every section
(one field each, after the run-level ones, in the order imported below). Floor:
above ``core/``, below ``config.py`` (``tests/test_architecture.py``).

Example:
    >>> SECTIONS.names(), SECTIONS["ibot"] is IBOTConfig
    (['ibot', 'msn', 'swav'], True)
"""

from protossl.method_config.base import (
    SECTIONS,
    MethodSection,
    add_section_fields,
    register_section,
    require,
)
from protossl.method_config.ibot import IBOTConfig
from protossl.method_config.msn import MSNConfig
from protossl.method_config.swav import SwAVConfig

__all__ = [
    "SECTIONS",
    "IBOTConfig",
    "MSNConfig",
    "MethodSection",
    "SwAVConfig",
    "add_section_fields",
    "register_section",
    "require",
]
