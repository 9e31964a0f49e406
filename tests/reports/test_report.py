"""protossl report: figures, one self-contained page, tables from the runs, errors, a browser.

One tiny sweep (dino and dino-kp at K = 16 and 32, 2 epochs of 3 steps on a 60-image
ImageFolder) is trained in-process into the layout ``protossl sweep`` writes
(run folders plus results.json) and shared by the tests of this module.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reference import brute_force_labels, brute_force_m

from protossl.cli import main
from protossl.config import config_from_dict, load_config
from protossl.core.files import load_checkpoint
from protossl.data import EvalTransform, load_dataset
from protossl.methods import build_method
from protossl.reports.embedding import subsample_indices, tsne_2d
from protossl.reports.probe import probe_run
from protossl.reports.report import ReportOptions, m_vs_k_points, write_report
from protossl.reports.runs import discover_runs, group_twins, read_run
from protossl.sweep import collect, load_sweep

KS = (16, 32)
SWEEP = """
set:
  data.batch_size: 16
  data.num_local_crops: 1
  model.backbone: vit_tiny
  model.head_hidden_dim: 16
  model.bottleneck_dim: 8
  optim.epochs: 2
  monitor.monitor_samples: 8
  monitor.eval_knn: true
  num_threads: 1
grid:
  preset: [dino, dino-kp]
  model.num_prototypes: [16, 32]
"""
GLOBAL_FIGURES = {"m_vs_k.png", "training_curves.png", "uniqueness_curve.png"}
# Small, so each t-SNE map takes a fraction of a second.
OPTIONS = ReportOptions(samples=100, clusters=3, per_cluster=4)


def make_image_folder(root: Path, classes: int = 3, per_class: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            pixels[..., c % 3] = 255  # a class-dependent colour
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


def per_run_figures(name: str) -> set[str]:
    return {f"embeddings_tsne_{name}.png", f"usage_{name}.png", f"clusters_{name}.png"}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep folder, as protossl sweep leaves it (trained in-process: faster)."""
    from protossl.engine.trainer import Trainer

    base = tmp_path_factory.mktemp("report")
    data = make_image_folder(base / "images")
    sweep_file = base / "sweep.yaml"
    sweep_file.write_text(SWEEP.replace("set:\n", f"set:\n  data.spec: 'folder:{data}'\n"))
    runs = load_sweep(sweep_file)
    out = base / "sweep"
    threads = torch.get_num_threads()
    try:
        for run in runs:
            cfg = load_config(run.preset, overrides=list(run.overrides))
            Trainer(cfg, out / run.name, progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    collect(runs, out, {})
    return out


@pytest.fixture(scope="module")
def sweep_report(sweep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(sweep_dir, tmp_path_factory.mktemp("out") / "report", OPTIONS, False)


class _Page(HTMLParser):
    """The <img> attributes, table rows and every tag name of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.tags: set[str] = set()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_page(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text())
    return page


def assert_valid_pngs(folder: Path) -> set[str]:
    names = {p.name for p in folder.glob("*.png")}
    for name in names:
        assert (folder / name).stat().st_size > 0
        with Image.open(folder / name) as image:
            assert image.format == "PNG"
            assert image.width > 100 and image.height > 100
            image.verify()
    return names


def assert_page_embeds_exactly(index: Path, expected: set[str]) -> _Page:
    """Every <img> is a data: URI of one expected PNG's exact bytes, each exactly once;
    the page has no script, link, stylesheet or address of any kind."""
    page = parse_page(index)
    files = [str(img.get("data-file")) for img in page.images]
    assert sorted(files) == sorted(expected)
    for img in page.images:
        src = str(img.get("src"))
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert (
            base64.b64decode(src[len(prefix) :])
            == (index.parent / str(img["data-file"])).read_bytes()
        )
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", index.read_text())
    assert not re.search(r"https?:|ftp:|file:|//[A-Za-z]|\burl\(|@import", text)
    assert not page.tags & {"script", "link", "iframe", "object", "embed", "a"}
    return page


# --------------------------------------------------------------------- the sweep report


def test_sweep_report_writes_every_figure_and_embeds_each(
    sweep_dir: Path, sweep_report: Path
) -> None:
    names = [r["run"] for r in json.loads((sweep_dir / "results.json").read_text())]
    expected = set(GLOBAL_FIGURES)
    expected |= {f"prototypes_tsne_dino_num_prototypes-{k}.png" for k in KS}
    for name in names:
        expected |= per_run_figures(name)
    assert sweep_report == sweep_report.parent / "index.html" and sweep_report.is_file()
    assert assert_valid_pngs(sweep_report.parent) == expected
    assert_page_embeds_exactly(sweep_report, expected)


def test_sweep_report_table_holds_each_runs_numbers(sweep_dir: Path, sweep_report: Path) -> None:
    page = parse_page(sweep_report)
    header = next(row for row in page.rows if row and row[0] == "run")
    table = {
        row[0]: dict(zip(header, row, strict=True)) for row in page.rows if len(row) == len(header)
    }
    rows = json.loads((sweep_dir / "results.json").read_text())
    for row in rows:
        summary = json.loads((sweep_dir / row["run"] / "summary.json").read_text())
        shown = table[row["run"]]
        assert shown["method"] == row["preset"]  # dino / dino-kp from the config alone
        assert shown["K"] == str(summary["K"]) == str(row["K"])
        assert shown["M"] == str(summary["M"])
        assert shown["M/K"] == f"{summary['M'] / summary['K']:.3f}"
        assert shown["used"] == str(summary["usage"]["prototypes_used"])
        assert shown["knn_top1@20"] == f"{summary['eval']['knn_top1@20']:.4f}"
        assert shown["steps"] == str(summary["steps"]) == "6"


def test_m_vs_k_points_and_twins_come_from_the_results(sweep_dir: Path) -> None:
    runs = discover_runs(sweep_dir)
    rows = json.loads((sweep_dir / "results.json").read_text())
    assert [r.name for r in runs] == [row["run"] for row in rows]
    points = m_vs_k_points(runs)
    assert [(p.label, p.K, p.M) for p in points] == [
        (row["preset"], row["K"], row["M"]) for row in rows
    ]
    assert [p.regularized for p in points] == [row["preset"] == "dino-kp" for row in rows]
    assert [p.data for p in points] == [row["data"] for row in rows]
    summaries = [json.loads((sweep_dir / row["run"] / "summary.json").read_text()) for row in rows]
    assert [p.used for p in points] == [s["usage"]["prototypes_used"] for s in summaries]
    groups = group_twins(runs)
    assert [[r.name for r in g] for g in groups] == [
        [f"dino_num_prototypes-{k}", f"dino-kp_num_prototypes-{k}"] for k in KS
    ]


# --------------------------------------------------------------------- the measurements


def test_probe_matches_an_independent_forward_pass(sweep_dir: Path) -> None:
    run = read_run(sweep_dir / "dino_num_prototypes-32")
    state = load_checkpoint(run.path / "checkpoints" / "last.pt")
    cfg = config_from_dict(state["config"])
    method = build_method(cfg)
    method.load_state_dict(state["method"])
    method.eval()
    test = load_dataset(cfg.data.spec, "test", transform=EvalTransform(cfg.data.image_size))
    images = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        features = method.teacher_features(images)
        argmax = method.teacher_logits(images).argmax(dim=1).numpy()

    probe = probe_run(run, samples=1000, cache=False)  # more than the 12 test images: all
    assert probe is not None and probe.test is not None
    np.testing.assert_allclose(probe.test.features, features.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(probe.test.assignments, argmax)
    np.testing.assert_array_equal(probe.test.labels, test.targets)
    np.testing.assert_array_equal(probe.test.usage.counts, np.bincount(argmax, minlength=32))
    prototypes = method.student_prototypes()
    m, groups = brute_force_m(prototypes, run.eps), brute_force_labels(prototypes, run.eps)
    assert probe.unique.num_unique == m == run.M
    # Same partition: the pairs (reference group, probe group) are as many as the groups.
    assert len(set(zip(groups.tolist(), probe.unique.labels.tolist(), strict=True))) == m
    np.testing.assert_allclose(np.linalg.norm(probe.directions, axis=1), 1.0, atol=1e-12)


def test_probe_subset_is_seeded_and_cached(sweep_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(
        sweep_dir / "dino-kp_num_prototypes-16", run_dir, ignore=shutil.ignore_patterns("cache")
    )
    run = read_run(run_dir)
    first = probe_run(run, samples=5, seed=3)
    assert first is not None and first.test is not None
    cached = sorted((run_dir / "cache").glob("features-*.pt"))
    assert len(cached) == 2  # backbone features and logits of the 5-image subset
    stamps = [p.stat().st_mtime_ns for p in cached]
    again = probe_run(run, samples=5, seed=3)
    assert again is not None and again.test is not None
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # read, not rewritten
    np.testing.assert_array_equal(first.test.features, again.test.features)
    test = load_dataset(run.config["data"]["spec"], "test")
    chosen = subsample_indices(len(test), 5, seed=3)
    assert first.test.labels.tolist() == [test.targets[i] for i in chosen]
    for i, index in enumerate(chosen):
        expected = np.asarray(test[int(index)][0])
        assert np.array_equal(np.asarray(first.test.images[i][0]), expected)


def test_tsne_and_subsets_are_seeded() -> None:
    x = np.random.default_rng(0).normal(size=(60, 12))
    a, b = tsne_2d(x, seed=1), tsne_2d(x, seed=1)
    assert a.shape == (60, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # Two well-separated clusters stay apart in the map.
    two = np.concatenate([np.tile([1.0, 0, 0], (20, 1)), np.tile([0, 1.0, 0], (20, 1))])
    two += np.random.default_rng(1).normal(scale=0.01, size=two.shape)
    m = tsne_2d(two, seed=0)
    within = max(np.ptp(m[:20], axis=0).max(), np.ptp(m[20:], axis=0).max())
    assert np.linalg.norm(m[:20].mean(0) - m[20:].mean(0)) > 2 * within
    for n in (1, 2, 3):
        assert tsne_2d(x[:n]).shape == (n, 2)
    idx = subsample_indices(5000, 2000, seed=4)
    assert idx.size == 2000 == np.unique(idx).size and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, subsample_indices(5000, 2000, seed=4))
    assert not np.array_equal(idx, subsample_indices(5000, 2000, seed=5))
    assert subsample_indices(7, 2000).tolist() == list(range(7))


# --------------------------------------------------------------------- one run, fewer files


def test_single_run_report(sweep_dir: Path, tmp_path: Path) -> None:
    name = "dino-kp_num_prototypes-16"
    index = write_report(sweep_dir / name, tmp_path / "single", OPTIONS, False)
    expected = GLOBAL_FIGURES | {f"prototypes_tsne_{name}.png"} | per_run_figures(name)
    assert assert_valid_pngs(index.parent) == expected
    assert_page_embeds_exactly(index, expected)


def test_run_without_checkpoint_gets_summary_figures_and_a_note(
    sweep_dir: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in ("config.yaml", "metrics.jsonl"):
        shutil.copy(sweep_dir / "dino_num_prototypes-16" / file, bare / file)
    # A collapsed-looking summary (M < K) and more protocols: the table must show them.
    summary = json.loads((sweep_dir / "dino_num_prototypes-16" / "summary.json").read_text())
    summary.update(M=11, M_over_K=11 / 16)
    summary["usage"]["prototypes_used"] = 5
    summary["eval"] = {"knn_top1@20": 0.8125, "linear_top1": 0.5, "cluster_nmi": None, "runs": {}}
    (bare / "summary.json").write_text(json.dumps(summary))
    index = write_report(bare, None, OPTIONS, False)
    assert index == bare / "report" / "index.html"
    assert assert_valid_pngs(index.parent) == GLOBAL_FIGURES
    page = assert_page_embeds_exactly(index, GLOBAL_FIGURES)
    assert "no checkpoints/last.pt" in index.read_text()
    header, row = (r for r in page.rows if r)
    shown = dict(zip(header, row, strict=True))
    assert (shown["K"], shown["M"], shown["M/K"], shown["used"]) == ("16", "11", "0.688", "5")
    assert (shown["knn_top1@20"], shown["linear_top1"], shown["cluster_nmi"]) == (
        "0.8125",
        "0.5000",
        "-",
    )
    assert "runs" not in header
    assert [(p.K, p.M) for p in m_vs_k_points(discover_runs(bare))] == [(16, 11)]


# --------------------------------------------------------------------- command line


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_cli_report_errors_are_one_line(
    make: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "target"
    if make == "empty":
        (target / "not_a_run").mkdir(parents=True)
        (target / "not_a_run" / "train.log").write_text("")
    elif make == "file":
        target.write_text("x")
    code, out, err = run_cli(["report", str(target)], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("protossl: error:"), err
    assert "Traceback" not in err
    assert {"empty": "no runs in", "missing": "does not exist", "file": "not a folder"}[make] in err
    if make == "empty":
        assert not (target / "report").exists()  # nothing written on failure


def test_cli_report_writes_the_page(
    sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in ("config.yaml", "summary.json", "metrics.jsonl"):
        shutil.copy(sweep_dir / "dino-kp_num_prototypes-32" / file, bare / file)
    code, out, err = run_cli(["report", str(bare), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert (tmp_path / "r" / "index.html").is_file()
    assert str(tmp_path / "r" / "index.html") in err


# --------------------------------------------------------------------- a real browser

_PROBE = (
    "<script>window.addEventListener('load', function () {"
    "var all = Array.prototype.slice.call(document.images);"
    "var ok = all.filter(function (i) { return i.complete && i.naturalWidth > 0; });"
    "var p = document.createElement('pre'); p.id = 'probe';"
    "p.textContent = 'images=' + all.length + ' loaded=' + ok.length;"
    "document.body.appendChild(p); });</script>"
)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _images_loaded(browser: str, page: Path, profile: Path) -> tuple[int, int]:
    flags = ["--headless", "--disable-gpu", "--disable-dev-shm-usage"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    done = subprocess.run(
        [
            browser,
            *flags,
            f"--user-data-dir={profile}",
            "--run-all-compositor-stages-before-draw",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r"images=(\d+) loaded=(\d+)", done.stdout)
    assert found, f"no probe result (exit {done.returncode}): {done.stderr[-500:]}"
    return int(found.group(1)), int(found.group(2))


def _chromium_or_skip() -> str:
    """The browser, or a skip on a developer machine without one; never a skip under CI."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            # .ci/run installs Debian's chromium; a CI without it would hide a broken page.
            pytest.fail(
                "chromium is missing under CI (.ci/run installs it: apt-get install chromium)"
            )
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return browser


def test_missing_browser_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing under CI"):
        _chromium_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        _chromium_or_skip()


def _artifacts_dir() -> Path:
    """Where the tests leave files for a person to look at (PROTOSSL_TEST_ARTIFACTS)."""
    default = Path(__file__).resolve().parents[2] / ".test-artifacts"
    return Path(os.environ.get("PROTOSSL_TEST_ARTIFACTS", default))


def test_every_image_loads_in_headless_chromium(sweep_report: Path, tmp_path: Path) -> None:
    browser = _chromium_or_skip()
    # Copy only the page elsewhere: self-contained means it needs nothing beside it.
    expected = len(list(sweep_report.parent.glob("*.png")))
    html = sweep_report.read_text()
    page = tmp_path / "copied" / "index.html"
    page.parent.mkdir()
    page.write_text(html.replace("</body>", _PROBE + "</body>"))
    assert _images_loaded(browser, page, tmp_path / "profile") == (expected, expected)
    # The probe can fail: one broken image is counted as not loaded.
    broken = tmp_path / "broken.html"
    bad = '<img src="data:image/png;base64,AAAA" alt="broken">'
    broken.write_text(html.replace("</body>", bad + _PROBE + "</body>"))
    assert _images_loaded(browser, broken, tmp_path / "profile") == (expected + 1, expected)


def test_report_screenshot_in_headless_chromium(sweep_report: Path, tmp_path: Path) -> None:
    # A picture of the page as a reader sees it, kept as a test artifact.
    browser = _chromium_or_skip()
    shot = _artifacts_dir() / "report_screenshot.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    flags = ["--headless", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    done = subprocess.run(
        [
            browser,
            *flags,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,1600",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            sweep_report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), f"no screenshot (exit {done.returncode}): {done.stderr[-500:]}"
    from PIL import Image

    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 1600)
        # Not a blank page: a rendered report has text and figures, so many colours.
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=rgb.width * rgb.height)
        assert colours is not None and len(colours) > 50


def test_demo_folder_is_a_collection_of_runs_not_one_run(tmp_path: Path) -> None:
    # `protossl demo --out D` writes D/summary.json next to D/dino and D/dino-kp.
    from protossl.reports.runs import discover_runs

    (tmp_path / "summary.json").write_text("[]")
    for name in ("dino", "dino-kp"):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text("method: dino\n")
        (run / "summary.json").write_text('{"K": 8, "M": 8}')
    assert [r.path.name for r in discover_runs(tmp_path)] == ["dino", "dino-kp"]


def test_against_k_lines_join_the_mean_per_k_and_skip_unknown_values(tmp_path: Path) -> None:
    from protossl.reports import figures

    points = [
        figures.MKPoint("dino", "dino", False, 256, 250, "bal", used=3),
        figures.MKPoint("dino", "dino", False, 256, 240, "bal", used=5),  # a second seed
        figures.MKPoint("dino", "dino", False, 1024, 1000, "bal", used=None),
        figures.MKPoint("dino-kp", "dino", True, 256, 256, "bal", used=9),
    ]
    plt = figures._pyplot()
    fig, ax = plt.subplots()
    figures._plot_against_k(ax, points, "used", {"dino": "C0"})
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["dino"].get_xdata()) == [256] and list(lines["dino"].get_ydata()) == [4.0]
    assert lines["dino-kp"].get_linestyle() == "--" and list(lines["dino-kp"].get_ydata()) == [9]
    ax.clear()
    figures._plot_against_k(ax, points, "M", {"dino": "C0"})
    dino = next(line for line in ax.get_lines() if line.get_label() == "dino")
    assert list(dino.get_xdata()) == [256, 1024] and list(dino.get_ydata()) == [245.0, 1000.0]
    plt.close(fig)
    # Two training data sets: two columns; usage known: a second row (5.2 x 4.2 in, 100 dpi).
    lt = figures.MKPoint("dino", "dino", False, 256, 100, "lt", used=2)
    out = figures.plot_m_vs_k([*points, lt], tmp_path / "m.png")
    assert Image.open(out).size == (1040, 840)


def test_usage_histogram_shows_a_few_used_prototypes_among_thousands(tmp_path: Path) -> None:
    # Usage collapse: 3 of 4,096 prototypes take every image. Their bars must be visible
    # (a linear rank axis drew them under one pixel wide: an empty-looking plot).
    from protossl.reports import figures

    counts = np.zeros(4096, dtype=np.int64)
    counts[[7, 99, 4000]] = [500, 300, 200]
    out = figures.plot_usage(counts, tmp_path / "usage.png", "3 of 4096 used")
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    blue = np.abs(pixels - np.array([0x1F, 0x77, 0xB4])).sum(axis=2) < 30  # matplotlib's C0
    assert blue.sum() > 2000
