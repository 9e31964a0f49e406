"""Compact heads: groups equal the unique-prototype groups, assignments are preserved."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protossl.diagnostics.dedupe import (
    assignment_agreement,
    dedupe_prototypes,
    save_compact_head,
)


def _planted(num_groups: int, copies: int, dim: int, jitter: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_groups, dim, generator=gen), dim=1)
    rows = centres.repeat_interleave(copies, dim=0)
    rows = rows + jitter * torch.randn(rows.shape, generator=gen)
    scales = torch.rand(rows.shape[0], 1, generator=gen) + 0.5  # norms do not matter
    return rows * scales


def test_groups_and_sizes_match_planted_duplicates() -> None:
    weights = _planted(num_groups=20, copies=3, dim=16, jitter=1e-4, seed=0)
    head = dedupe_prototypes(weights, eps=0.025)
    assert head.prototypes.shape == (20, 16)
    assert head.group_sizes.tolist() == [3] * 20
    # Rows 3g..3g+2 are copies of centre g, and canonical labels follow first members.
    assert head.group_of.tolist() == [g for g in range(20) for _ in range(3)]
    torch.testing.assert_close(head.prototypes.norm(dim=1), torch.ones(20))
    assert head.bytes_saved == (60 - 20) * 16 * 4


def test_compact_argmax_equals_original_up_to_group() -> None:
    embeddings = F.normalize(torch.randn(5000, 24, generator=torch.Generator().manual_seed(2)))
    exact = _planted(num_groups=32, copies=4, dim=24, jitter=0.0, seed=1)
    assert assignment_agreement(exact, dedupe_prototypes(exact), embeddings) == 1.0
    # Near-duplicates: only embeddings on a decision boundary (within the group's
    # spread) can change group; with a spread of 2e-4 that is a fraction of a percent.
    tight = _planted(num_groups=32, copies=4, dim=24, jitter=2e-4, seed=1)
    agreement = assignment_agreement(tight, dedupe_prototypes(tight), embeddings)
    assert 0.995 <= agreement <= 1.0


def test_no_duplicates_keeps_every_prototype() -> None:
    weights = torch.randn(50, 32, generator=torch.Generator().manual_seed(3))
    head = dedupe_prototypes(weights, eps=0.025)
    assert head.prototypes.shape[0] == 50
    torch.testing.assert_close(head.prototypes, F.normalize(weights, dim=1))


def test_safetensors_round_trip(tmp_path) -> None:
    from safetensors.torch import load_file

    weights = _planted(num_groups=5, copies=2, dim=8, jitter=0.0, seed=4)
    head = dedupe_prototypes(weights)
    save_compact_head({"teacher": head}, tmp_path / "head.safetensors")
    loaded = load_file(str(tmp_path / "head.safetensors"))
    assert torch.equal(loaded["teacher.prototypes"], head.prototypes)
    assert torch.equal(loaded["teacher.group_of"], head.group_of)
    assert list(tmp_path.iterdir()) == [tmp_path / "head.safetensors"]  # no temporary left


def test_cli_dedupe_writes_compact_head_and_reports(tmp_path, capsys) -> None:
    import json

    from safetensors.torch import load_file

    from protossl.cli import main

    weights = _planted(num_groups=6, copies=3, dim=8, jitter=0.0, seed=5)
    checkpoint = tmp_path / "msn.pth"
    torch.save({"prototypes": weights, "epoch": 3}, checkpoint)
    out = tmp_path / "compact.safetensors"
    assert main(["dedupe", str(checkpoint), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (head,) = report["heads"].values()
    assert report["format"] == "msn"
    assert head["K"] == 18 and head["M"] == 6
    assert head["bytes_saved"] == 12 * 8 * 4
    assert head["argmax_agreement_random_directions"] == 1.0
    tensors = load_file(str(out))
    assert tensors["prototypes.prototypes"].shape == (6, 8)
