"""Tests for DINO's weighted kNN classifier."""

from __future__ import annotations

import math

import pytest
import torch

from protossl.evaluation import knn_accuracy, knn_predict


def _brute_force_scores(train, labels, test, num_classes, k, temperature):
    """Independent reference: Python loops over points, no top-k or scatter."""

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    train_u = [unit(row) for row in train.tolist()]
    out = []
    for q in test.tolist():
        qu = unit(q)
        sims = [(sum(a * b for a, b in zip(qu, t, strict=True)), i) for i, t in enumerate(train_u)]
        sims.sort(key=lambda s: -s[0])
        row = [0.0] * num_classes
        for sim, i in sims[: min(k, len(train_u))]:
            row[int(labels[i])] += math.exp(sim / temperature)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def test_hand_computed_example() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 0])
    # Second test point is not unit length: [3, 4] -> [0.6, 0.8].
    test = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    scores = knn_predict(train, labels, test, num_classes=3, k=3, temperature=0.5)
    r = 1 / math.sqrt(2)
    # Point 1: sims 1 (c0), 0.7071 (c0), 0 (c1) are the top 3; -1 (c1) is dropped.
    # Point 2: sims 0.98995 (c0, (0.6+0.8)/sqrt 2), 0.8 (c1), 0.6 (c0); -0.6 dropped.
    expected = torch.tensor(
        [
            [math.exp(1 / 0.5) + math.exp(r / 0.5), math.exp(0 / 0.5), 0.0],
            [math.exp(1.4 * r / 0.5) + math.exp(0.6 / 0.5), math.exp(0.8 / 0.5), 0.0],
        ]
    )
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 10, 60])
@pytest.mark.parametrize("temperature", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_matches_brute_force(k: int, temperature: float, chunk_size: int) -> None:
    g = torch.Generator().manual_seed(k * 1000 + chunk_size)
    train = torch.randn(50, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (50,), generator=g)
    test = torch.randn(13, 6, generator=g, dtype=torch.float64)
    got = knn_predict(
        train, labels, test, num_classes=4, k=k, temperature=temperature, chunk_size=chunk_size
    )
    ref = _brute_force_scores(train, labels, test, 4, k, temperature)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)


def test_chunking_gives_identical_results() -> None:
    g = torch.Generator().manual_seed(0)
    train, labels = torch.randn(300, 16, generator=g), torch.randint(0, 10, (300,), generator=g)
    test = torch.randn(97, 16, generator=g)
    whole = knn_predict(train, labels, test, num_classes=10, chunk_size=1024)
    for chunk in (1, 5, 32, 96):
        chunked = knn_predict(train, labels, test, num_classes=10, chunk_size=chunk)
        # BLAS blocks a matmul differently for different row counts, so scores may differ
        # in the last bits; the votes, hence the predictions, are the same.
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=0)
        assert torch.equal((chunked > 0), (whole > 0))
        assert torch.equal(chunked.argmax(1), whole.argmax(1))
    y = torch.randint(0, 10, (97,), generator=g)
    assert knn_accuracy(train, labels, test, y, ks=(5, 20), chunk_size=3) == knn_accuracy(
        train, labels, test, y, ks=(5, 20)
    )


def test_well_separated_clusters_are_perfect() -> None:
    g = torch.Generator().manual_seed(1)
    num_classes, dim = 6, 32
    centers = torch.randn(num_classes, dim, generator=g) * 10

    def sample(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        return centers[y] + 0.1 * torch.randn(n, dim, generator=g), y

    (xtr, ytr), (xte, yte) = sample(300), sample(100)
    res = knn_accuracy(xtr, ytr, xte, yte, ks=(1, 20))
    assert res == {"knn_top1@1": 1.0, "knn_top5@1": 1.0, "knn_top1@20": 1.0, "knn_top5@20": 1.0}


def test_random_labels_are_near_chance() -> None:
    g = torch.Generator().manual_seed(2)
    xtr, ytr = torch.randn(2000, 16, generator=g), torch.randint(0, 10, (2000,), generator=g)
    xte, yte = torch.randn(1000, 16, generator=g), torch.randint(0, 10, (1000,), generator=g)
    res = knn_accuracy(xtr, ytr, xte, yte, ks=(20,))
    assert abs(res["knn_top1@20"] - 0.1) < 0.04  # binomial std ~ 0.0095
    assert abs(res["knn_top5@20"] - 0.5) < 0.08


def test_top5_ignores_classes_no_neighbour_voted_for() -> None:
    # k=1: only one class gets a vote, so top-5 must equal top-1 even with 10 classes.
    g = torch.Generator().manual_seed(3)
    xtr, ytr = torch.randn(200, 8, generator=g), torch.randint(0, 10, (200,), generator=g)
    xte, yte = torch.randn(300, 8, generator=g), torch.randint(0, 10, (300,), generator=g)
    res = knn_accuracy(xtr, ytr, xte, yte, ks=(1,))
    assert res["knn_top5@1"] == res["knn_top1@1"]


def test_top5_only_with_five_classes_and_default_num_classes() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 1, 2])
    res = knn_accuracy(x, y, x, y, ks=(1,))
    assert res == {"knn_top1@1": 1.0}
    assert "knn_top5@1" in knn_accuracy(x, y, x, y, num_classes=5, ks=(1,))


def test_k_larger_than_train_set_uses_all_points() -> None:
    g = torch.Generator().manual_seed(4)
    train, labels = torch.randn(5, 3, generator=g), torch.tensor([0, 1, 1, 2, 0])
    test = torch.randn(4, 3, generator=g)
    torch.testing.assert_close(
        knn_predict(train, labels, test, num_classes=3, k=100),
        knn_predict(train, labels, test, num_classes=3, k=5),
    )


def test_half_precision_features_do_not_overflow() -> None:
    g = torch.Generator().manual_seed(5)
    train, labels = torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    test = torch.randn(6, 8, generator=g)
    half = knn_predict(train.half(), labels, test.half(), num_classes=3)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(
        half, knn_predict(train, labels, test, num_classes=3), rtol=2e-2, atol=0
    )


def test_empty_test_set_gives_empty_scores() -> None:
    scores = knn_predict(
        torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.randn(0, 3), num_classes=2
    )
    assert scores.shape == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"num_classes": 2}, "labels must lie"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    args = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        knn_predict(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]), torch.randn(2, 3), **args)


@pytest.mark.parametrize(
    ("train", "labels", "test", "match"),
    [
        (torch.randn(5, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 3), "train_labels"),
        (torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.randn(2, 4), "dimension"),
        (torch.randn(5), torch.zeros(5, dtype=torch.long), torch.randn(2, 3), "2-D"),
        (torch.randn(5, 3), torch.zeros(5), torch.randn(2, 3), "integer"),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), torch.randn(2, 3), "empty"),
    ],
)
def test_mismatched_shapes(train, labels, test, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        knn_predict(train, labels, test, num_classes=3)


def test_accuracy_argument_errors() -> None:
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(x, y, x, y[:4])
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(x, y, x, y, ks=(5, 0))
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(x, y, x, y, temperature=0)
    with pytest.raises(ValueError, match="ks"):
        knn_accuracy(x, y, x, y, ks=())
    with pytest.raises(ValueError, match="test labels must lie"):
        knn_accuracy(x, y, x, torch.tensor([0, 1, 2, 0, 7]), num_classes=3)


# ------------------------------------------------------------------ several k, search, budget


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def test_hand_computed_several_k_change_the_winner() -> None:
    from protossl.evaluation.knn import knn_classify

    # Cosine similarities to the query [1, 0]: 1.0 (class 0), 0.95 and 0.95 (class 1),
    # 0.5 (class 2). With T = 0.1 the votes are e^10, e^9.5, e^9.5, e^5:
    # k=1 -> class 0; k=2 -> class 0 (22026 > 13360); k=3 -> class 1 (26720 > 22026);
    # k=4 -> class 1, and class 2 enters the ranking.
    a = math.acos(0.95)
    train = torch.tensor([_unit(0.0), _unit(a), _unit(-a), _unit(math.acos(0.5))])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.0]])
    e10, e95, e5 = math.exp(10), math.exp(9.5), math.exp(5)
    expected = {
        1: [e10, 0.0, 0.0],
        2: [e10, e95, 0.0],
        3: [e10, 2 * e95, 0.0],
        4: [e10, 2 * e95, e5],
    }
    for k, row in expected.items():
        got = knn_predict(train, labels, query, num_classes=3, k=k, temperature=0.1)
        torch.testing.assert_close(got, torch.tensor([row]), rtol=1e-5, atol=0)
    ranked = knn_classify(train, labels, query, 3, ks=(1, 2, 3, 4), temperature=0.1)
    assert {k: v.tolist()[0] for k, v in ranked.items()} == {
        1: [0, -1, -1],
        2: [0, 1, -1],
        3: [1, 0, -1],
        4: [1, 0, 2],
    }
    acc = knn_accuracy(train, labels, query, torch.tensor([1]), ks=(1, 2, 3, 4), temperature=0.1)
    assert acc == {"knn_top1@1": 0.0, "knn_top1@2": 0.0, "knn_top1@3": 1.0, "knn_top1@4": 1.0}


def test_dino_default_ks_match_brute_force_per_k() -> None:
    g = torch.Generator().manual_seed(6)
    train = torch.randn(400, 12, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (400,), generator=g)
    test = torch.randn(9, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (9,), generator=g)
    res = knn_accuracy(train, labels, test, y, ks=(10, 20, 100, 200), chunk_size=4)
    for k in (10, 20, 100, 200):
        ref = _brute_force_scores(train, labels, test, 7, k, 0.07)
        assert res[f"knn_top1@{k}"] == float((ref.argmax(1) == y).double().mean())
        top5 = ref.topk(5, dim=1)
        hit5 = ((top5.indices == y[:, None]) & (top5.values > 0)).any(1)
        assert res[f"knn_top5@{k}"] == float(hit5.double().mean())


def test_knn_search_matches_full_sort_and_budget_bounds_the_chunk() -> None:
    from protossl.evaluation.knn import _chunk_rows, knn_search

    g = torch.Generator().manual_seed(7)
    train, test = torch.randn(500, 8, generator=g), torch.randn(37, 8, generator=g)
    full = (
        torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    )
    ref_sims, ref_idx = full.sort(dim=1, descending=True)
    for budget in (4 * 500, 4 * 500 * 5, 10**9):  # 1 row, 5 rows, everything at once
        sims, idx = knn_search(train, test, k=30, memory_budget=budget)
        torch.testing.assert_close(sims, ref_sims[:, :30])
        assert torch.equal(idx, ref_idx[:, :30])
    assert _chunk_rows(None, 100_000, 256 * 2**20) == 671  # 100k x 100k: 671 x 100k floats
    assert _chunk_rows(None, 10**12, 256 * 2**20) == 1  # never zero rows
    assert _chunk_rows(64, 10**6, 1) == 64  # an explicit chunk size wins


def test_memory_budget_does_not_change_results() -> None:
    g = torch.Generator().manual_seed(8)
    train, labels = torch.randn(300, 16, generator=g), torch.randint(0, 10, (300,), generator=g)
    test, y = torch.randn(101, 16, generator=g), torch.randint(0, 10, (101,), generator=g)
    base = knn_accuracy(train, labels, test, y, ks=(10, 20, 100, 200))
    for budget in (4 * 300, 4 * 300 * 7, 4 * 300 * 1000):
        assert (
            knn_accuracy(train, labels, test, y, ks=(10, 20, 100, 200), memory_budget=budget)
            == base
        )
