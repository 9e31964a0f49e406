"""Methods: a backbone + head + objective, one small registered file each."""

from protossl.methods.base import (
    METHODS,
    Method,
    StepContext,
    StepOutput,
    build_method,
    register_method,
)
from protossl.methods.dino import DINO
from protossl.methods.ibot import IBOT
from protossl.methods.msn import MSN
from protossl.methods.swav import SwAV

__all__ = [
    "DINO",
    "IBOT",
    "METHODS",
    "MSN",
    "Method",
    "StepContext",
    "StepOutput",
    "SwAV",
    "build_method",
    "register_method",
]
