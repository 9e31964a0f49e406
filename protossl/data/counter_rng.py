"""Counter-based random numbers for the batched augmentation: every uniform is a pure
function of (seed, stream, index), computed with integer arithmetic on the host.

A counter-based generator, unlike a sequential one, needs no state to carry between calls,
so the crops of an image depend only on its seed (the trainer passes each image's
``sample_seed``, :mod:`protossl.data.sampling`): not on the batch it sits in, the device,
the number of processes, or torch's global generator, which stays untouched. That is what
makes a resumed run bit-identical.

The mixing function is SplitMix64's finalizer (Steele, Lea and Flood, "Fast Splittable
Pseudorandom Number Generators", OOPSLA 2014), applied once to the seed and once to the
seed's state advanced by the golden-ratio increment per draw, as SplitMix64 itself does.

Example:
    >>> u = counter_uniforms([7], stream=2, count=4)
    >>> bool((u == counter_uniforms([7, 8], stream=2, count=4)[:1]).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # SplitMix64's finalizer (Steele et al., 2014): a bijection on 64-bit words whose outputs
    # for consecutive inputs pass BigCrush. uint64 arithmetic wraps, as the algorithm needs.
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_uniforms(seeds: Sequence[int] | np.ndarray, stream: int, count: int) -> np.ndarray:
    """``[len(seeds), count]`` uniforms in [0, 1) (53 bits): draw ``j`` of ``stream`` for each
    seed, a pure function of (seed, stream, j).

    Example:
        >>> u = counter_uniforms([1, 2], stream=0, count=3)
        >>> u.shape, bool((u >= 0).all() and (u < 1).all())
        ((2, 3), True)
        >>> bool((counter_uniforms([2], 0, 3) == u[1]).all())
        True
    """
    # Negative seeds wrap to their two's-complement word, so every Python int is a key.
    keys = np.asarray([int(s) & _MASK64 for s in np.asarray(seeds).tolist()], dtype=np.uint64)
    counters = np.arange(count, dtype=np.uint64) + np.uint64(stream * count + 1)
    with np.errstate(over="ignore"):
        state = _splitmix64(keys)[:, None] + counters[None, :] * _GOLDEN
        # The top 53 bits fill a float64's mantissa exactly: uniform on a 2**-53 grid.
        bits = _splitmix64(state) >> np.uint64(11)
    return bits.astype(np.float64) * 2.0**-53
