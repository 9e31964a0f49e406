"""The ``protossl`` command line, called in-process through ``protossl.cli.main``.

Covers the user-facing contract of the design document: the run directory
layout, one JSON object on stdout for ``--json``, and every user error ending in
exit status 2 with exactly one line on stderr, no traceback, and nothing already
written lost. One tiny training run (a 40-image ImageFolder, 4 steps) is shared
by the tests of this module; tests that change it work on a copy.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from reference import brute_force_m

from protossl.cli import main
from protossl.config import config_from_dict, load_config

K = 16
TINY_SETS = [
    "model.num_prototypes=16",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "model.backbone=vit_tiny",
    "data.num_local_crops=1",
    "data.batch_size=16",  # 32 training images: 2 steps per epoch
    "monitor.eval_knn=false",
    "monitor.monitor_samples=8",
    "num_threads=1",
]


def tiny_flags() -> list[str]:
    flags: list[str] = []
    for item in TINY_SETS:
        flags += ["--set", item]
    return flags


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``protossl ARGV``; argparse's SystemExit included."""
    capsys.readouterr()  # drop anything printed before
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("protossl"), lines[0]
    assert "error" in lines[0]
    assert out == ""
    return lines[0]


def make_image_folder(root: Path, classes: int = 2, per_class: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            pixels[..., c % 3] = 255  # a class-dependent colour
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


def pairwise_distances(weights: torch.Tensor) -> np.ndarray:
    w = weights.detach().to(torch.float64).numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return np.sqrt(((w[:, None, :] - w[None, :, :]) ** 2).sum(-1))


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_folder: Path) -> dict:
    """One tiny run: 2 epochs of 2 steps. Returns its directory and the CLI arguments."""
    run = tmp_path_factory.mktemp("runs") / "run"
    argv = [
        "train",
        "--preset",
        "dino",
        "--data",
        f"folder:{data_folder}",
        "--out",
        str(run),
        "--epochs",
        "2",
        "--max-steps",
        "4",
        "--json",
        *tiny_flags(),
    ]
    threads = torch.get_num_threads()
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(threads)  # num_threads=1 must not leak into other tests
    assert code == 0
    expected = load_config(
        "dino",
        overrides=[
            *TINY_SETS,
            f"data.spec=folder:{data_folder}",
            "optim.epochs=2",
            "optim.max_steps=4",
        ],
    )
    return {"dir": run, "config": expected}


@pytest.fixture
def run_copy(trained_run: dict, tmp_path: Path) -> Path:
    """A private copy of the shared run, for tests that change it."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run["dir"], copy)
    return copy


# ---------------------------------------------------------------------- presets


def test_presets_lists_the_bundled_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["presets"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert "dino" in names and "dino-kp" in names
    kp_line = next(line for line in out.splitlines() if line.split()[0] == "dino-kp")
    assert "KoLeo" in kp_line  # the preset's first comment line describes it


@pytest.mark.parametrize("preset", ["dino", "dino-kp"])
def test_presets_show_prints_the_resolved_config(
    capsys: pytest.CaptureFixture[str], preset: str
) -> None:
    code, out, _ = run_cli(["presets", "--show", preset], capsys)
    assert code == 0
    data = yaml.safe_load(out)
    assert data["method"] == "dino"
    assert config_from_dict(data) == load_config(preset)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from protossl import __version__

    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0
    assert __version__ in out


# ------------------------------------------------------------------- user errors


def _write_random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("no_command", "command"),
        ("epochs_negative", "--epochs"),
        ("epochs_text", "--epochs"),
        ("max_steps_zero", "--max-steps"),
        ("eps_zero", "--eps"),
        ("unknown_flag", "--bogus"),
        ("unknown_preset", "did you mean 'dino'"),
        ("unknown_set_key", "did you mean 'model.num_prototypes'"),
        ("bad_set_value", "model.num_prototypes"),
        ("set_without_equals", "key=value"),
        ("missing_config", "nope.yaml"),
        ("unknown_backbone", "backbone"),
        ("analyze_missing", "missing.pt"),
        ("analyze_empty_dir", "checkpoints/last.pt"),
        ("analyze_corrupt", "corrupt.pt"),
        ("analyze_truncated", "truncated.pt"),
        ("analyze_not_protossl", "not a protossl checkpoint"),
        ("analyze_not_a_dict", "not a dict"),
        ("analyze_no_prototypes", "prototype"),
        ("train_missing_folder", "nonexistent"),
        ("train_empty_folder", "empty"),
        ("train_resume_empty_dir", "last.pt"),
        ("eval_unknown_protocol", "segmentation"),
        ("eval_missing_run", "missing_run"),
        ("presets_unknown", "dnio"),
    ],
)
def test_user_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str, fragment: str
) -> None:
    out_dir = tmp_path / "out"
    corrupt = _write_random_bytes(tmp_path / "corrupt.pt")
    good = tmp_path / "good.pt"
    torch.save({"format": "protossl", "method": {"x.head.prototypes.weight": torch.eye(3)}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": torch.zeros(1)}, foreign)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    no_protos = tmp_path / "noprotos.pt"
    torch.save(
        {"format": "protossl", "method": {"student.head.mlp.0.weight": torch.eye(2)}}, no_protos
    )
    empty_folder = tmp_path / "empty_images"
    (empty_folder / "a").mkdir(parents=True)
    (tmp_path / "emptydir").mkdir()
    cases = {
        "no_command": [],
        "epochs_negative": ["train", "--epochs", "-3"],
        "epochs_text": ["train", "--epochs", "abc"],
        "max_steps_zero": ["train", "--max-steps", "0"],
        "eps_zero": ["analyze", str(good), "--eps", "0"],
        "unknown_flag": ["train", "--bogus"],
        "unknown_preset": ["train", "--preset", "dnio", "--out", str(out_dir)],
        "unknown_set_key": ["train", "--set", "model.num_prototype=5", "--out", str(out_dir)],
        "bad_set_value": ["train", "--set", "model.num_prototypes=abc", "--out", str(out_dir)],
        "set_without_equals": ["train", "--set", "model.num_prototypes", "--out", str(out_dir)],
        "missing_config": ["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(out_dir)],
        "unknown_backbone": ["train", "--set", "model.backbone=vit_huge", "--out", str(out_dir)],
        "analyze_missing": ["analyze", str(tmp_path / "missing.pt")],
        "analyze_empty_dir": ["analyze", str(tmp_path / "emptydir")],
        "analyze_corrupt": ["analyze", str(corrupt)],
        "analyze_truncated": ["analyze", str(truncated), "--json"],
        "analyze_not_protossl": ["analyze", str(foreign)],
        "analyze_not_a_dict": ["analyze", str(tensor_only)],
        "analyze_no_prototypes": ["analyze", str(no_protos)],
        "train_missing_folder": [
            "train",
            "--data",
            "folder:/nonexistent/protossl-test",
            "--out",
            str(out_dir),
            *tiny_flags(),
        ],
        "train_empty_folder": [
            "train",
            "--data",
            f"folder:{empty_folder}",
            "--out",
            str(out_dir),
            *tiny_flags(),
        ],
        "train_resume_empty_dir": ["train", "--resume", "--out", str(tmp_path / "emptydir")],
        "eval_unknown_protocol": [
            "eval",
            str(good),
            "--data",
            "digits",
            "--protocols",
            "knn,segmentation",
        ],
        "eval_missing_run": ["eval", str(tmp_path / "missing_run"), "--data", "digits"],
        "presets_unknown": ["presets", "--show", "dnio"],
    }
    code, out, err = run_cli(cases[case], capsys)
    line = assert_one_line_error(code, out, err)
    assert fragment in line
    # Nothing half-written: a failed train never creates its run directory.
    assert not out_dir.exists()


@pytest.mark.parametrize("case", ["analyze_corrupt", "train_missing_folder"])
def test_user_error_in_a_real_process(tmp_path: Path, case: str) -> None:
    """Exit status 2, one line on stderr, no traceback -- warnings included."""
    corrupt = _write_random_bytes(tmp_path / "corrupt.pt")
    argv = {
        "analyze_corrupt": ["analyze", str(corrupt), "--json"],
        "train_missing_folder": [
            "train",
            "--data",
            "folder:/nonexistent/protossl-test",
            "--out",
            str(tmp_path / "out"),
        ],
    }[case]
    proc = subprocess.run(
        [sys.executable, "-m", "protossl", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("protossl: error:")
    assert proc.stdout == ""


# ------------------------------------------------------------------ training run


def test_run_directory_layout(trained_run: dict) -> None:
    run = trained_run["dir"]
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.pt").is_file()
    assert (run / "metrics.jsonl").is_file()
    assert (run / "summary.json").is_file()
    tensorboard = run / "tensorboard"
    assert tensorboard.is_dir()
    assert any(p.name.startswith("events.out.tfevents") for p in tensorboard.iterdir())
    # No temporary files are left behind by the atomic writes.
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_config_yaml_is_the_resolved_config(trained_run: dict) -> None:
    run, expected = trained_run["dir"], trained_run["config"]
    saved = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert saved == expected
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["format"] == "protossl"
    assert config_from_dict(state["config"]) == expected


def test_metrics_jsonl_has_one_object_per_epoch(trained_run: dict) -> None:
    lines = (trained_run["dir"] / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 2  # 2 epochs
    required = {"step", "epoch", "loss", "lr", "K", "M", "usage_entropy", "dead_prototypes"}
    required.add("seconds")
    for epoch, row in enumerate(rows):
        assert isinstance(row, dict)
        assert required <= set(row), required - set(row)
        assert row["epoch"] == epoch
        assert row["step"] == 2 * (epoch + 1)
        assert row["K"] == K
        assert 1 <= row["M"] <= K
        assert 0 <= row["dead_prototypes"] <= K
        assert 0.0 <= row["usage_entropy"] <= math.log(K) + 1e-9
        assert math.isfinite(row["loss"]) and row["lr"] >= 0 and row["seconds"] >= 0


def test_summary_json(trained_run: dict) -> None:
    summary = json.loads((trained_run["dir"] / "summary.json").read_text())
    for key in ("K", "M", "M_over_K", "usage", "wall_time_seconds", "versions"):
        assert key in summary, key
    assert summary["K"] == K
    assert 1 <= summary["M"] <= K
    assert summary["M_over_K"] == pytest.approx(summary["M"] / K)
    assert summary["wall_time_seconds"] > 0
    assert summary["versions"]["torch"] == torch.__version__
    assert isinstance(summary["usage"], dict) and "usage_entropy" in summary["usage"]
    # Its M is the M of the saved student prototypes at the configured eps.
    state = torch.load(trained_run["dir"] / "checkpoints" / "last.pt", weights_only=True)
    w = state["method"]["student.head.prototypes.weight"]
    assert summary["M"] == brute_force_m(w, summary["eps"])


def test_train_into_an_existing_run_is_refused_and_changes_nothing(
    run_copy: Path, data_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = file_digests(run_copy)
    argv = [
        "train",
        "--data",
        f"folder:{data_folder}",
        "--out",
        str(run_copy),
        "--epochs",
        "1",
        *tiny_flags(),
    ]
    line = assert_one_line_error(*run_cli(argv, capsys))
    assert "--resume" in line
    assert file_digests(run_copy) == before  # checkpoint byte-identical, nothing lost


def test_resume_with_a_changed_model_is_refused(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = file_digests(run_copy)
    argv = ["train", "--resume", "--out", str(run_copy), "--set", "model.num_prototypes=32"]
    assert_one_line_error(*run_cli(argv, capsys))
    assert file_digests(run_copy) == before


def test_max_steps_inside_an_epoch(
    data_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # batch 8 -> 4 steps per epoch; stop after 2 of them.
    argv = [
        "train",
        "--data",
        f"folder:{data_folder}",
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        *tiny_flags(),
        "--set",
        "data.batch_size=8",
    ]
    threads = torch.get_num_threads()
    try:
        code, _, _ = run_cli(argv, capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2


def test_resume_from_a_foreign_checkpoint_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"a": torch.zeros(1)}, tmp_path / "run" / "checkpoints" / "last.pt")
    assert_one_line_error(*run_cli(["train", "--resume", "--out", str(tmp_path / "run")], capsys))


# ---------------------------------------------------------------------- analyze


def _analyze_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = run_cli(["analyze", *argv, "--json"], capsys)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1  # one JSON object on stdout
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def test_analyze_run_counts_like_brute_force(
    trained_run: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    run = trained_run["dir"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    result = _analyze_json(capsys, str(run))
    assert set(result["heads"]) == {"student", "teacher"}
    for head in ("student", "teacher"):
        w = state["method"][f"{head}.head.prototypes.weight"]
        assert result["heads"][head]["K"] == K == w.shape[0]
        assert result["heads"][head]["M"] == brute_force_m(w, 0.025)
        assert result["heads"][head]["eps"] == 0.025

    # A non-default eps halfway between the 3rd and 4th smallest pairwise distances of
    # the student prototypes: exactly three links, so M < K, and no distance near eps.
    w = state["method"]["student.head.prototypes.weight"]
    d = np.sort(pairwise_distances(w)[np.triu_indices(K, 1)])
    eps = float((d[2] + d[3]) / 2)
    expected = brute_force_m(w, eps)
    assert expected < K
    result = _analyze_json(capsys, str(run / "checkpoints" / "last.pt"), "--eps", repr(eps))
    assert result["heads"]["student"]["M"] == expected
    assert result["heads"]["student"]["eps"] == pytest.approx(eps)


def test_analyze_human_output_goes_to_stderr(
    trained_run: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["analyze", str(trained_run["dir"])], capsys)
    assert code == 0
    assert out == ""
    assert f"K {K}" in err and "student" in err and "teacher" in err


def _planted_prototypes() -> tuple[torch.Tensor, dict[float, int]]:
    """17 rows in R^16: 12 far-apart directions plus planted duplicates.

    * row 0 also appears scaled by 2 and by 0.5 (same direction: distance 0),
    * row 1 also appears with a 1e-4 perturbation,
    * a chain a=row 2, b, c with |a-b| = |b-c| = 0.015 and |a-c| ~ 0.030:
      one group at eps 0.025 (single linkage), three singletons at eps 0.01.
    """
    gen = torch.Generator().manual_seed(3)
    base = torch.nn.functional.normalize(torch.randn(12, 16, generator=gen, dtype=torch.float64))
    a = base[2]
    u = torch.randn(16, generator=gen, dtype=torch.float64)
    u = torch.nn.functional.normalize(u - (u @ a) * a, dim=0)  # orthogonal to a
    theta = 2 * math.asin(0.015 / 2)  # chord length 0.015
    b = math.cos(theta) * a + math.sin(theta) * u
    c = math.cos(2 * theta) * a + math.sin(2 * theta) * u
    noise = torch.nn.functional.normalize(
        torch.randn(16, generator=gen, dtype=torch.float64), dim=0
    )
    extra = torch.stack([2.0 * base[0], 0.5 * base[0], base[1] + 1e-4 * noise, b, c])
    w = torch.cat([base * 3.0, extra])
    perm = torch.randperm(w.shape[0], generator=gen)
    # 12 groups at 0.025 and 0.05; at 0.01 the chain falls apart into 3.
    return w[perm].float(), {0.025: 12, 0.05: 12, 0.01: 14}


def test_planted_prototypes_are_what_they_claim() -> None:
    w, expected = _planted_prototypes()
    d = pairwise_distances(w)
    for eps, m in expected.items():
        assert brute_force_m(w, eps) == m
    # The chain really is a chain: exactly one pair at about 0.030 (a-c), not linked at 0.025.
    assert np.isclose(d, 0.030, atol=1e-4).sum() == 2  # symmetric matrix: (a,c) and (c,a)
    # The planted base directions are far apart.
    off = d[np.triu_indices(len(w), 1)]
    assert (off[off > 0.05] > 0.3).all()


@pytest.mark.parametrize("eps", [None, 0.05, 0.01])
def test_analyze_planted_duplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], eps: float | None
) -> None:
    w, expected = _planted_prototypes()
    teacher = torch.randn(w.shape, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "planted.pt"
    torch.save(
        {
            "format": "protossl",
            "version": 1,
            "config": {"model": {"num_prototypes": w.shape[0]}},
            "method": {
                "student.head.prototypes.weight": w,
                "teacher.head.prototypes.weight": teacher,
            },
        },
        path,
    )
    argv = [str(path)] + ([] if eps is None else ["--eps", str(eps)])
    result = _analyze_json(capsys, *argv)
    student, teacher_head = result["heads"]["student"], result["heads"]["teacher"]
    assert student["K"] == teacher_head["K"] == 17
    assert student["M"] == expected[eps or 0.025]
    assert teacher_head["M"] == 17
    if eps in (None, 0.05):
        # Group sizes: 3 (row 0 and its rescaled copies), 3 (the chain), 2, then singletons.
        assert student["largest_groups"][:3] == [3, 3, 2]
        assert student["M_over_K"] == pytest.approx(12 / 17)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save(
        {
            "format": "protossl",
            "method": {"student.head.prototypes.weight": torch.eye(4)},
            "payload": _Payload(marker),
        },
        path,
    )
    return path


def test_malicious_pickle_is_refused_without_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The payload is live: unpickled unsafely, it creates its marker file.
    probe_marker = tmp_path / "probe_marker"
    probe = _malicious_checkpoint(tmp_path / "probe.pt", probe_marker)
    torch.load(probe, weights_only=False)
    assert probe_marker.exists()

    marker = tmp_path / "pwned"
    evil = _malicious_checkpoint(tmp_path / "evil.pt", marker)
    for command in (["analyze", str(evil), "--json"], ["eval", str(evil), "--data", "digits"]):
        line = assert_one_line_error(*run_cli(command, capsys))
        assert "evil.pt" in line
        assert not marker.exists()


@pytest.mark.parametrize("case", ["one_d", "empty", "nan", "eps_inf"])
def test_analyze_bad_prototype_tensor_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    weights = {
        "one_d": torch.zeros(5),
        "empty": torch.zeros(0, 4),
        "nan": torch.full((4, 4), float("nan")),
        "eps_inf": torch.randn(4, 4),
    }[case]
    path = tmp_path / "bad.pt"
    torch.save({"format": "protossl", "method": {"student.head.prototypes.weight": weights}}, path)
    extra = ["--eps", "inf"] if case == "eps_inf" else []
    assert_one_line_error(*run_cli(["analyze", str(path), *extra], capsys))


# ------------------------------------------------------------------------- eval


def test_eval_json_and_summary_entry(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "eval" not in json.loads((run_copy / "summary.json").read_text())
    code, out, err = run_cli(["eval", str(run_copy), "--data", "digits", "--json"], capsys)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    top1 = result["results"]["knn_top1@20"]
    assert 0.0 <= top1 <= 1.0
    assert result["data"] == "digits"
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["eval"]["knn_top1@20"] == pytest.approx(top1)
    # The rest of the summary is kept.
    assert summary["K"] == K
    assert not (run_copy / "summary.json.tmp").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--data", "imagenet:/x"],
        ["--data", "digits", "--test-data", "folder:/nonexistent/protossl-test"],
        ["--data", "digits", "--protocols", ","],
    ],
)
def test_eval_bad_arguments_leave_the_run_untouched(
    run_copy: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    before = file_digests(run_copy)
    assert_one_line_error(*run_cli(["eval", str(run_copy), *argv, "--json"], capsys))
    assert file_digests(run_copy) == before


@pytest.mark.parametrize("with_config", [False, True])
def test_eval_of_a_prototype_only_checkpoint_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_config: bool
) -> None:
    w, _ = _planted_prototypes()
    state: dict = {
        "format": "protossl",
        "version": 1,
        "method": {"student.head.prototypes.weight": w},
    }
    if with_config:
        state["config"] = {"model": {"num_prototypes": w.shape[0]}}
    path = tmp_path / "planted.pt"
    torch.save(state, path)
    assert_one_line_error(*run_cli(["eval", str(path), "--data", "digits"], capsys))


def test_eval_with_a_corrupt_summary_is_a_user_error(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_copy / "summary.json").write_text("{not json")
    assert_one_line_error(*run_cli(["eval", str(run_copy), "--data", "digits"], capsys))


def test_resume_refuses_changes_that_break_the_run(tmp_path, capsys):
    from protossl.cli import main

    run = tmp_path / "r"
    run.mkdir()
    (run / "checkpoints").mkdir()
    for argv in (
        ["train", "--out", str(run), "--resume", "--set", "data.batch_size=32"],
        ["train", "--out", str(run), "--resume", "--preset", "dino-kp"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--resume" in err[0]


def test_out_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    from protossl.cli import main

    target = tmp_path / "a_file"
    target.write_text("keep me")
    code = main(
        ["train", "--out", str(target), "--max-steps", "1", "--set", "monitor.eval_knn=false"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("protossl")
    assert target.read_text() == "keep me"
