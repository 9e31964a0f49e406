"""The demo's reference rows, its table and its training curves (``protossl demo``).

The reference rows say what the runs' kNN numbers mean: the runs' backbone at
its random initialization, and weighted kNN on the raw pixels. Both are checked
against independent computations; the curves against hand-written run folders.
One test trains: 44 steps of the demo's recipe against two ablations (about a minute).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from protossl.config import Config, load_config, save_config
from protossl.data import EvalTransform, load_dataset
from protossl.demo import (
    DEMO_OVERRIDES,
    PIXELS_ROW,
    UNTRAINED_ROW,
    format_table,
    raw_pixel_knn,
    raw_pixels_row,
    run_config,
    untrained_backbone_row,
    untrained_method,
)
from protossl.engine.trainer import Trainer
from protossl.evaluation.knn_eval import evaluate_knn
from protossl.methods import build_method
from protossl.reports.curves import curve_figure, plot_runs

K = 64


@pytest.fixture(scope="module")
def cfg() -> Config:
    """The demo's configuration (DINO on digits), with fewer prototypes for speed."""
    return load_config("dino", overrides=[*DEMO_OVERRIDES, f"model.num_prototypes={K}"])


@pytest.fixture(scope="module")
def small_cfg(cfg: Config) -> Config:
    """``cfg`` on a long-tailed digits train split (354 images) and 64 monitor images:
    three backbone passes over it take seconds on one core."""
    overrides = ["data.spec=digits@lt=100", "monitor.monitor_samples=64"]
    return load_config("dino", overrides=[*DEMO_OVERRIDES, f"model.num_prototypes={K}", *overrides])


def _pixels(split: str, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset(cfg.data.spec, split, transform=EvalTransform(cfg.data.image_size))
    items = [data[i] for i in range(len(data))]
    return torch.stack([x.flatten() for x, _ in items]), torch.tensor([y for _, y in items])


def _brute_force_knn(
    train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, k: int, t: float
) -> torch.Tensor:
    """DINO's weighted kNN vote, written out: cosine top-k, weights exp(sim / T)."""
    train_n = F.normalize(train.double(), dim=1)
    test_n = F.normalize(test.double(), dim=1)
    sims, idx = (test_n @ train_n.T).topk(k, dim=1)
    num_classes = int(train_y.max()) + 1
    votes = torch.zeros(test.shape[0], num_classes, dtype=torch.float64)
    for row in range(test.shape[0]):
        for sim, j in zip(sims[row].tolist(), idx[row].tolist(), strict=True):
            votes[row, int(train_y[j])] += math.exp(sim / t)
    return votes.argmax(dim=1)


def test_raw_pixel_knn_is_a_brute_force_weighted_knn_on_the_pixels(cfg: Config) -> None:
    train_x, train_y = _pixels("train", cfg)
    test_x, test_y = _pixels("test", cfg)
    k, t = cfg.monitor.knn_k, cfg.monitor.knn_temperature
    predicted = _brute_force_knn(train_x, train_y, test_x, k, t)
    expected = float((predicted == test_y).double().mean())
    result = raw_pixel_knn(cfg)
    assert result[f"knn_top1@{k}"] == pytest.approx(expected, abs=1e-12)
    assert 0.5 < expected < 1.0  # digits are easy from pixels, but not perfectly
    assert raw_pixels_row(cfg) == {"run": PIXELS_ROW, "reference": True, "eval": result}


def test_untrained_row_is_the_runs_backbone_at_initialization(
    small_cfg: Config, tmp_path: Path
) -> None:
    cfg = small_cfg
    # The row reads the run's saved config.yaml; it must come back as the same config.
    save_config(cfg, tmp_path / "config.yaml")
    loaded = run_config(tmp_path)
    assert loaded.to_dict() == cfg.to_dict()
    first, second = untrained_backbone_row(loaded), untrained_backbone_row(loaded)
    assert first == second  # deterministic, whatever the global random state
    torch.manual_seed(cfg.seed)
    fresh = build_method(cfg)
    assert first["eval"] == evaluate_knn(fresh, cfg)
    assert first["run"] == UNTRAINED_ROW and first["reference"] is True
    assert first["K"] == K and 1 <= first["M"] <= K and first["prototypes"]["K"] == K
    assert 1 <= first["usage"]["prototypes_used"] <= K
    # The same weights as a trainer builds for this config before its first step.
    from protossl.engine.trainer import Trainer

    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    built = untrained_method(cfg).state_dict()
    for key, value in trainer.method.state_dict().items():
        assert torch.equal(value.cpu(), built[key]), key


def _run_row(name: str, minutes: float) -> dict[str, object]:
    return {
        "run": name,
        "K": 1024,
        "M": 700,
        "M_over_K": 700 / 1024,
        "usage": {"prototypes_used": 40, "usage_entropy": 3.1},
        "prototypes": {"nn_distance_quantiles": {"q50": 0.02}},
        "eval": {"knn_top1@20": 0.9, "knn_top5@20": 0.99},
        "wall_time_seconds": minutes * 60,
    }


def test_table_shows_reference_rows_last_with_dashes_where_they_have_no_value() -> None:
    untrained = {
        "run": UNTRAINED_ROW,
        "reference": True,
        "K": 1024,
        "M": 1024,
        "M_over_K": 1.0,
        "usage": {"prototypes_used": 3, "usage_entropy": 0.5},
        "prototypes": {"nn_distance_quantiles": {"q50": 0.9}},
        "eval": {"knn_top1@20": 0.8},
    }
    pixels = {"run": PIXELS_ROW, "reference": True, "eval": {"knn_top1@20": 0.953}}
    rows = [untrained, _run_row("dino", 5.0), pixels, _run_row("dino-kp", 5.5)]
    lines = format_table(rows).splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["run", "dino", "dino-kp"]
    assert set(lines[3]) == {"-"}  # a rule between the runs and the references
    assert lines[4].startswith(UNTRAINED_ROW) and lines[5].startswith(PIXELS_ROW)
    assert len({len(line) for line in lines}) == 1  # columns line up
    untrained_cells = lines[4][len(UNTRAINED_ROW) :].split()
    assert untrained_cells == ["1024", "1024", "1.000", "3", "0.50", "0.900", "0.800", "-"]
    # K, M, M/K, used, usage H, NN median: "-"; then kNN top-1; minutes "-".
    pixel_cells = lines[5][len(PIXELS_ROW) :].split()
    assert pixel_cells == ["-"] * 6 + ["0.953", "-"]
    # Without reference rows the table is the runs alone.
    assert len(format_table(rows[1:2]).splitlines()) == 2


def _fake_run(run_dir: Path, epochs: int, shrink: float, checkpoint: bool) -> None:
    """A run folder with hand-written metrics (K = 16) and optionally a checkpoint."""
    run_dir.mkdir(parents=True)
    records = [
        {
            "epoch": e,
            "step": 4 * (e + 1),
            "cross_entropy": 2.77 - 0.1 * e,
            "loss": 2.8 - 0.1 * e,
            "K": 16,
            "M": 16 - int(shrink * e),
            "prototypes_used": 3 + e,
            "nn_distance_q10": 0.5 / (e + 1),
            "nn_distance_median": 0.8 / (e + 1),
            "log_K": math.log(16),
        }
        for e in range(epochs)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if checkpoint:
        weights = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
        weights[8:] = weights[:8]  # eight duplicated pairs: M = 8 at every eps
        state = {"format": "protossl", "method": {"student.head.prototypes.weight": weights}}
        (run_dir / "checkpoints").mkdir()
        torch.save(state, run_dir / "checkpoints" / "last.pt")


def test_curves_show_every_panel_for_both_runs(tmp_path: Path) -> None:
    _fake_run(tmp_path / "dino", 3, shrink=3.0, checkpoint=True)
    _fake_run(tmp_path / "dino-kp", 3, shrink=0.0, checkpoint=True)
    runs = {"dino": tmp_path / "dino", "dino-kp": tmp_path / "dino-kp"}
    out = plot_runs(runs, tmp_path / "curves.png")
    assert out.is_file() and out.stat().st_size > 0
    fig = curve_figure(runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 5, titles  # M, used, NN distances, loss vs ln K, uniqueness
    m_ax, _used, nn_ax, loss_ax, unique_ax = fig.axes
    assert [list(line.get_ydata()) for line in m_ax.get_lines()][:2] == [[16, 13, 10], [16] * 3]
    assert len(nn_ax.get_lines()) == 4  # median and q10 of both runs
    dashed = [line for line in loss_ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(math.log(16))
    assert unique_ax.get_xscale() == "log" and unique_ax.get_xlim() == pytest.approx((1e-3, 1))
    curve = unique_ax.get_lines()[0].get_ydata()
    assert curve[0] == 8 and all(a >= b for a, b in zip(curve, curve[1:], strict=False))


def test_curves_skip_panels_without_data(tmp_path: Path) -> None:
    # No checkpoint: no uniqueness panel. An old metrics file: only what it has.
    _fake_run(tmp_path / "new", 2, shrink=1.0, checkpoint=False)
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "step": 4, "loss": 2.0}) + "\n")
    assert len(curve_figure({"new": tmp_path / "new"}).axes) == 4
    assert [ax.get_title() for ax in curve_figure({"old": old}).axes] == ["loss (dashed: ln K)"]
    out = plot_runs({"old": old, "missing": tmp_path / "missing"}, tmp_path / "c.png")
    assert out.stat().st_size > 0


# ---------------------------------------------------------------- the recipe leaves ln K

RECIPE_EPOCHS = 4  # 44 steps of the demo's recipe (batch 128 on the 1,438 digits)


def _short_run(tmp_path: Path, name: str, *extra: str) -> list[dict[str, float]]:
    """``RECIPE_EPOCHS`` epochs of the demo's runs (plain DINO, the demo's K, one thread)."""
    overrides = [*DEMO_OVERRIDES, f"optim.epochs={RECIPE_EPOCHS}", "monitor.eval_knn=false"]
    cfg = load_config("dino", overrides=[*overrides, "num_threads=1", *extra])
    threads = torch.get_num_threads()
    try:
        Trainer(cfg, tmp_path / name, progress=False).fit()
    finally:
        torch.set_num_threads(threads)  # the run's one thread must not slow later tests
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_demo_recipe_leaves_the_plateau_where_dino_defaults_do_not(tmp_path: Path) -> None:
    # docs/recipe.md: the BatchNorm head and the sharper teacher (0.02) are what take the
    # cross-entropy off ln K; DINO's teacher temperature 0.04 keeps the targets' entropy
    # high, and without the BatchNorm head the run sits at ln K.
    recipe = _short_run(tmp_path, "recipe")[-1]
    warm_teacher = _short_run(
        tmp_path, "tt04", "objective.teacher_temp=0.04", "objective.warmup_teacher_temp=0.04"
    )[-1]
    no_bn = _short_run(tmp_path, "no_bn", "model.use_bn_in_head=false")[-1]
    ln_k = recipe["log_K"]
    assert ln_k == pytest.approx(math.log(1024))
    # Measured (torch 2.14.1, one thread): CE 0.937 ln K, targets 2.3 nats; 0.987 ln K and
    # 5.2 nats at 0.04; without the BatchNorm head 0.991 ln K, targets 6.7 of 6.9 nats.
    assert recipe["cross_entropy"] < 0.95 * ln_k
    assert recipe["target_entropy"] < 3.0
    assert warm_teacher["cross_entropy"] > recipe["cross_entropy"] + 0.2
    assert warm_teacher["target_entropy"] > recipe["target_entropy"] + 2.0
    assert no_bn["cross_entropy"] > 0.98 * ln_k
    assert no_bn["target_entropy"] > 0.9 * ln_k
