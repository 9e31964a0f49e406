"""protossl: clustering-based self-supervised learning that measures and prevents
partial prototype collapse (DINO, iBOT, vMF variants, MSN/PMSN, SwAV).

Example:
    >>> from protossl.diagnostics import count_unique_prototypes
    >>> import torch
    >>> count_unique_prototypes(torch.randn(64, 16)).num_unique
    64
"""

__version__ = "0.1.0"
