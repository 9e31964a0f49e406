"""Tests for DINO's cosine and linear warm-up schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protossl.engine.schedules import cosine_schedule, linear_warmup_schedule


def _direct_cosine(base, final, total, warmup, start):
    """Element-by-element formula of DINO's utils.cosine_scheduler, in plain Python."""
    out = []
    for step in range(total):
        if step < warmup:
            frac = step / (warmup - 1) if warmup > 1 else 0.0
            out.append(start + frac * (base - start))
        else:
            n = total - warmup
            i = step - warmup
            out.append(final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n)))
    return out


@pytest.mark.parametrize(("total", "warmup"), [(1, 0), (10, 0), (10, 3), (100, 10), (7, 1), (5, 4)])
def test_cosine_matches_direct_formula(total: int, warmup: int) -> None:
    got = cosine_schedule(5e-4, 1e-6, total, warmup_steps=warmup, start_warmup_value=1e-5)
    assert got.shape == (total,)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _direct_cosine(5e-4, 1e-6, total, warmup, 1e-5), rtol=1e-12)


def test_cosine_endpoints() -> None:
    base, final, total, warmup = 1.0, 0.1, 101, 11
    s = cosine_schedule(base, final, total, warmup_steps=warmup, start_warmup_value=0.2)
    assert s[0] == pytest.approx(0.2)
    assert s[warmup - 1] == pytest.approx(base)  # linspace includes the end point
    assert s[warmup] == pytest.approx(base)  # cosine starts at base
    n = total - warmup
    # DINO's last value is one step short of final: final + (base-final)(1+cos(pi(n-1)/n))/2.
    last = final + 0.5 * (base - final) * (1 + math.cos(math.pi * (n - 1) / n))
    assert s[-1] == pytest.approx(last)
    assert abs(s[-1] - final) < 1e-3


def test_warmup_is_linear() -> None:
    s = cosine_schedule(1.0, 0.0, total_steps=50, warmup_steps=10, start_warmup_value=0.0)
    diffs = np.diff(s[:10])
    np.testing.assert_allclose(diffs, np.full(9, 1.0 / 9), rtol=1e-12)


def test_cosine_part_is_monotone() -> None:
    dec = cosine_schedule(1.0, 0.0, total_steps=200, warmup_steps=20)
    assert np.all(np.diff(dec[20:]) < 0)
    # EMA momentum style: increasing towards final (0.996 -> 1).
    inc = cosine_schedule(0.996, 1.0, total_steps=200)
    assert np.all(np.diff(inc) > 0)
    assert inc[0] == pytest.approx(0.996)


def test_no_warmup_starts_at_base() -> None:
    s = cosine_schedule(0.04, 0.4, total_steps=30)
    assert s[0] == pytest.approx(0.04)


def test_warmup_longer_than_schedule_is_clipped() -> None:
    s = cosine_schedule(1.0, 0.0, total_steps=5, warmup_steps=50, start_warmup_value=0.0)
    assert s.shape == (5,)
    np.testing.assert_allclose(s, np.linspace(0.0, 1.0, 5))
    t = linear_warmup_schedule(0.04, 0.07, warmup_steps=100, total_steps=3)
    np.testing.assert_allclose(t, [0.04, 0.055, 0.07])


@pytest.mark.parametrize("bad_total", [0, -3])
def test_invalid_total_steps(bad_total: int) -> None:
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(1.0, 0.0, bad_total)
    with pytest.raises(ValueError, match="total_steps"):
        linear_warmup_schedule(0.04, 0.07, 0, bad_total)


def test_negative_warmup() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, 10, warmup_steps=-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        linear_warmup_schedule(0.04, 0.07, -1, 10)


def test_linear_warmup_schedule_teacher_temperature() -> None:
    t = linear_warmup_schedule(0.04, 0.07, warmup_steps=4, total_steps=10)
    assert t.shape == (10,)
    np.testing.assert_allclose(t[:4], [0.04, 0.05, 0.06, 0.07])
    np.testing.assert_allclose(t[4:], 0.07)
    assert np.all(np.diff(t) >= 0)


def test_linear_warmup_zero_steps_is_constant() -> None:
    np.testing.assert_allclose(linear_warmup_schedule(0.04, 0.07, 0, 6), np.full(6, 0.07))
