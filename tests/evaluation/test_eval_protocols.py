"""Linear probe, few-shot, long-tail groups and clustering metrics on data with known answers."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from protossl.data.sources import long_tail_counts, long_tail_indices
from protossl.evaluation.clustering import argmax_clusters, cluster_metrics, purity
from protossl.evaluation.fewshot import few_shot_accuracy, few_shot_indices, msn_preprocess
from protossl.evaluation.linear import Standardizer, fit_linear, linear_probe
from protossl.evaluation.longtail import group_accuracy, shot_groups


def separated(n: int, num_classes: int, dim: int, seed: int, spread: float = 0.05):
    """Tight clusters around random far-apart centres: every sane classifier is perfect."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99)) * 5
    y = torch.arange(n) % num_classes
    return centers[y] + spread * torch.randn(n, dim, generator=g), y


def random_data(n: int, num_classes: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randint(0, num_classes, (n,), generator=g)


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_is_perfect_on_separated_features() -> None:
    x, y = separated(300, 6, 16, seed=0)
    xt, yt = separated(120, 6, 16, seed=1)
    probe = linear_probe(x, y, xt, num_classes=6, epochs=20)
    assert torch.equal(probe.ranked[:, 0], yt)
    assert probe.val_top1 == 1.0
    assert len(probe.grid) == 9


def test_linear_probe_random_labels_are_at_chance() -> None:
    x, y = random_data(1000, 5, 16, seed=2)
    xt, yt = random_data(1000, 5, 16, seed=3)
    probe = linear_probe(x, y, xt, num_classes=5, epochs=10)
    acc = float((probe.ranked[:, 0] == yt).float().mean())
    assert abs(acc - 0.2) < 0.05  # binomial std 0.013


def test_linear_probe_never_sees_test_labels() -> None:
    # The API takes no test labels; and the protocol wrapper's predictions must not move
    # when the test labels are permuted (only the scores do).
    from protossl.evaluation.run_eval import _run_protocols

    x, y = random_data(200, 4, 8, seed=4)
    xt, yt = random_data(80, 4, 8, seed=5)
    opts = {"ks": (5,), "epochs": 5, "shots": (1,), "draws": 1}
    counts = torch.bincount(y, minlength=4).tolist()
    a = _run_protocols(["linear", "longtail"], (x, y, counts), (xt, yt), None, 4, opts)
    perm = yt[torch.randperm(80, generator=torch.Generator().manual_seed(0))]
    b = _run_protocols(["linear", "longtail"], (x, y, counts), (xt, perm), None, 4, opts)
    for key in ("linear_lr", "linear_weight_decay", "linear_val_top1"):
        assert a[key] == b[key]
    ranked = linear_probe(x, y, xt, 4, epochs=5).ranked[:, 0]
    assert a["linear_top1"] == pytest.approx(float((ranked == yt).float().mean()))
    assert b["linear_top1"] == pytest.approx(float((ranked == perm).float().mean()))


def test_linear_probe_selection_uses_only_training_data() -> None:
    # Test features far outside the training distribution must not change the choice.
    x, y = random_data(150, 3, 6, seed=6)
    a = linear_probe(x, y, torch.randn(10, 6), 3, epochs=3)
    b = linear_probe(x, y, 1e3 * torch.randn(10, 6), 3, epochs=3)
    assert (a.lr, a.weight_decay, a.grid) == (b.lr, b.weight_decay, b.grid)


def test_fit_linear_is_deterministic_and_matches_reference_sgd() -> None:
    x, y = random_data(40, 3, 5, seed=7)
    a = fit_linear(x, y, 3, lr=0.1, weight_decay=1e-3, epochs=3, batch_size=16, seed=1)
    b = fit_linear(x, y, 3, lr=0.1, weight_decay=1e-3, epochs=3, batch_size=16, seed=1)
    assert torch.equal(a.weight, b.weight)
    # Reference: plain-Python SGD with momentum and coupled weight decay, cosine lr.
    w, bias = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    vw, vb = torch.zeros_like(w), torch.zeros_like(bias)
    g = torch.Generator().manual_seed(1)
    total, step = 3 * 3, 0
    for _ in range(3):
        order = torch.randperm(40, generator=g)
        for s in range(0, 40, 16):
            idx = order[s : s + 16]
            xb, yb = x[idx].double(), y[idx]
            p = torch.softmax(xb @ w.T + bias, dim=1)
            p[torch.arange(len(idx)), yb] -= 1
            gw, gb = p.T @ xb / len(idx) + 1e-3 * w, p.sum(0) / len(idx) + 1e-3 * bias
            lr = 0.1 * 0.5 * (1 + math.cos(math.pi * step / total))
            vw, vb = (0.9 * vw + gw, 0.9 * vb + gb) if step else (gw, gb)
            w, bias = w - lr * vw, bias - lr * vb
            step += 1
    torch.testing.assert_close(a.weight.double(), w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.bias.double(), bias, rtol=1e-4, atol=1e-5)


def test_standardizer_uses_fit_statistics() -> None:
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    s = Standardizer.fit(x)
    assert s(x).tolist() == [[-1.0, 0.0], [1.0, 0.0]]  # constant column stays finite
    assert s(torch.tensor([[5.0, 6.0]])).tolist() == [[3.0, 1.0]]


def test_linear_probe_bad_arguments() -> None:
    x, y = random_data(10, 2, 3, seed=8)
    with pytest.raises(ValueError, match="labels"):
        linear_probe(x, y, x, num_classes=1)
    with pytest.raises(ValueError, match="grids"):
        linear_probe(x, y, x, num_classes=2, lrs=())
    with pytest.raises(ValueError, match="lr > 0"):
        fit_linear(x, y, 2, lr=0.0, weight_decay=0.0)


# ----------------------------------------------------------------------------- few-shot


def test_few_shot_indices_counts_nesting_and_seeds() -> None:
    labels = [c for c in range(4) for _ in range(10)] + [4, 4]  # class 4 has only 2 images
    for shots in (1, 2, 5, 13):
        idx = few_shot_indices(labels, shots, draw=0)
        counts = Counter(labels[i] for i in idx)
        assert counts == {c: min(shots, 10 if c < 4 else 2) for c in range(5)}
    assert set(few_shot_indices(labels, 1, 3)) <= set(few_shot_indices(labels, 2, 3))
    assert few_shot_indices(labels, 2, 0) != few_shot_indices(labels, 2, 1)
    assert few_shot_indices(labels, 2, 1) == few_shot_indices(labels, 2, 1)


def test_msn_preprocess_centres_and_normalizes_rows() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 10.0]])
    z = msn_preprocess(x)
    ref = np.array([[-1.0, 0.0, 1.0], [-2.0, -2.0, 4.0]])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(z, ref)


def test_few_shot_separated_is_perfect_and_random_is_chance() -> None:
    x, y = separated(200, 5, 12, seed=9)
    xt, yt = separated(100, 5, 12, seed=10)
    res = few_shot_accuracy(x, y, xt, yt, 5, shots=(1, 2), draws=3)
    assert res == {
        "fewshot_1shot_top1_mean": 1.0,
        "fewshot_1shot_top1_std": 0.0,
        "fewshot_2shot_top1_mean": 1.0,
        "fewshot_2shot_top1_std": 0.0,
    }
    x, y = random_data(400, 4, 12, seed=11)
    xt, yt = random_data(2000, 4, 12, seed=12)
    res = few_shot_accuracy(x, y, xt, yt, 4, shots=(5,), draws=5)
    assert abs(res["fewshot_5shot_top1_mean"] - 0.25) < 0.05
    assert res["fewshot_5shot_top1_std"] > 0


def test_few_shot_mean_and_std_match_manual_draws() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = random_data(120, 3, 6, seed=13)
    xt, yt = random_data(60, 3, 6, seed=14)
    res = few_shot_accuracy(x, y, xt, yt, 3, shots=(2,), draws=3)

    def rows(a):
        a = a.double().numpy()
        a = a - a.mean(1, keepdims=True)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    accs = []
    for d in range(3):
        idx = few_shot_indices(y.tolist(), 2, d)
        clf = LogisticRegression(C=4000.0, fit_intercept=False, max_iter=1000)
        clf.fit(rows(x[idx]), y[idx].numpy())
        accs.append(float((clf.predict(rows(xt)) == yt.numpy()).mean()))
    assert res["fewshot_2shot_top1_mean"] == pytest.approx(np.mean(accs))
    assert res["fewshot_2shot_top1_std"] == pytest.approx(np.std(accs, ddof=1))


# ----------------------------------------------------------------------------- long tail


def test_long_tail_subsampler_exact_counts() -> None:
    # class c keeps floor(n_max * R^(-c / (C - 1))), classes in index order.
    sizes = [500] * 6
    for ratio in (1, 10, 100):
        expected = [math.floor(500 * ratio ** (-c / 5) + 1e-9) for c in range(6)]
        assert long_tail_counts(sizes, ratio) == expected
    targets = [c for c in range(6) for _ in range(500)]
    kept = long_tail_indices(targets, 6, ratio=100)
    assert Counter(targets[i] for i in kept) == {0: 500, 1: 199, 2: 79, 3: 31, 4: 12, 5: 5}


def test_shot_groups_boundaries() -> None:
    assert shot_groups([101, 100, 20, 19, 0]) == ["many", "medium", "medium", "few", "few"]
    with pytest.raises(ValueError):
        shot_groups([-1])


def test_group_accuracy_hand_computed() -> None:
    counts = [300, 150, 60, 25, 10, 3]  # many, many, medium, medium, few, few
    labels = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 5, 5])
    preds = torch.tensor([0, 1, 1, 2, 0, 3, 4, 0, 0, 0])
    res = group_accuracy(preds, labels, counts, prefix="lt_")
    assert res == {
        "lt_many_top1": 2 / 3,
        "lt_many_classes": 2,
        "lt_medium_top1": 2 / 3,
        "lt_medium_classes": 2,
        "lt_few_top1": 1 / 4,
        "lt_few_classes": 2,
        "lt_top1": 5 / 10,
    }
    assert group_accuracy(preds, labels, [500] * 6)["few_top1"] is None


def test_longtail_protocol_on_separated_features_is_perfect_per_group() -> None:
    from protossl.evaluation.run_eval import _run_protocols

    x, y = separated(3000, 5, 16, seed=15)
    keep = torch.tensor(long_tail_indices(y.tolist(), 5, ratio=100))
    x, y = x[keep], y[keep]
    counts = torch.bincount(y, minlength=5).tolist()
    assert counts == [600, 189, 60, 18, 6]
    xt, yt = separated(100, 5, 16, seed=16)
    opts = {"ks": (20,), "epochs": 10, "shots": (1,), "draws": 1}
    res = _run_protocols(["longtail"], (x, y, counts), (xt, yt), None, 5, opts)
    for model in ("knn", "linear"):
        for group in ("many", "medium", "few"):
            assert res[f"longtail_{model}_{group}_top1"] == 1.0
    assert (res["longtail_knn_many_classes"], res["longtail_knn_few_classes"]) == (2, 2)
    assert res["longtail_imbalance"] == 100.0


# ----------------------------------------------------------------------------- clustering


def _reference_nmi(a: np.ndarray, b: np.ndarray) -> float:
    """NMI with the arithmetic mean of the entropies, from counts (natural log)."""
    n = len(a)
    pa, pb = Counter(a.tolist()), Counter(b.tolist())
    pab = Counter(zip(a.tolist(), b.tolist(), strict=True))
    mi = sum(c / n * math.log(c * n / (pa[i] * pb[j])) for (i, j), c in pab.items())
    ha = -sum(c / n * math.log(c / n) for c in pa.values())
    hb = -sum(c / n * math.log(c / n) for c in pb.values())
    return mi / ((ha + hb) / 2)


def test_cluster_metrics_perfect_relabelled_clustering() -> None:
    labels = torch.arange(60) % 6
    clusters = (labels * 7 + 3) % 41  # a relabelling: one cluster per class
    res = cluster_metrics(clusters, labels)
    assert res["nmi"] == pytest.approx(1.0)
    assert res["ami"] == pytest.approx(1.0)
    assert res["ari"] == pytest.approx(1.0)
    assert res["purity"] == 1.0
    assert res["clusters_used"] == 6
    assert res["num_images"] == 60


def test_cluster_metrics_random_is_near_zero_and_matches_reference_nmi() -> None:
    g = torch.Generator().manual_seed(17)
    labels = torch.randint(0, 10, (3000,), generator=g)
    clusters = torch.randint(0, 10, (3000,), generator=g)
    res = cluster_metrics(clusters, labels)
    assert abs(res["ami"]) < 0.01 and abs(res["ari"]) < 0.01
    assert res["nmi"] == pytest.approx(_reference_nmi(clusters.numpy(), labels.numpy()))
    assert res["nmi"] < 0.02


def test_purity_hand_computed_and_one_cluster() -> None:
    clusters = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([5, 5, 7, 7, 7, 5])
    assert purity(clusters, labels) == (2 + 2 + 1) / 6
    res = cluster_metrics(torch.zeros(6, dtype=torch.long), torch.tensor([0, 0, 1, 1, 1, 2]))
    assert res["clusters_used"] == 1 and res["purity"] == 0.5 and res["nmi"] == 0.0


def test_argmax_clusters_and_cluster_protocol_on_planted_logits() -> None:
    from protossl.evaluation.run_eval import _run_protocols

    labels = torch.arange(40) % 4
    logits = torch.randn(40, 32, generator=torch.Generator().manual_seed(18))
    logits[torch.arange(40), labels * 8 + 1] += 100.0  # class c -> prototype 8c + 1
    assert torch.equal(argmax_clusters(logits), labels * 8 + 1)
    res = _run_protocols(["cluster"], None, None, (logits, labels), 4, {})
    assert res["cluster_nmi"] == pytest.approx(1.0)
    assert res["cluster_clusters_used"] == 4 and res["cluster_num_prototypes"] == 32
    with pytest.raises(ValueError):
        argmax_clusters(torch.zeros(3))
