"""Outputs never clobber inputs: every output option refuses a run's state and its own input,
and an existing output is replaced only with --force (then atomically)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from protossl.cli import main
from protossl.config import load_config
from protossl.core.errors import UserError
from protossl.engine.trainer import Trainer
from protossl.runs.outputs import check_output_file, check_output_folder, protected_reason

TINY = tiny_overrides(
    data__spec="digits",
    model__num_prototypes=16,
    model__head_hidden_dim=16,
    model__bottleneck_dim=8,
    data__batch_size=16,
    optim__epochs=1,
    optim__max_steps=2,
    monitor__monitor_samples=8,
)
RUN_STATE = ["config.yaml", "metrics.jsonl", "summary.json", "run.json", "checkpoints/last.pt"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("outputs") / "run"
    threads = torch.get_num_threads()
    try:
        Trainer(load_config("dino", overrides=TINY), folder, progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("target", RUN_STATE)
def test_dedupe_never_writes_over_a_runs_state(
    run: Path, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run)
    for force in ([], ["--force"]):  # --force does not lift it either
        code, err = _cli(["dedupe", str(run), "--out", str(run / target), *force], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "never writes over it" in err or "is the input" in err
    assert _snapshot(run) == before


def test_dedupe_refuses_its_input_and_an_existing_file_without_force(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "model.pt"
    copy.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    code, err = _cli(["dedupe", str(copy), "--out", str(copy), "--force"], capsys)
    assert code == 2 and "is the input" in err
    assert copy.read_bytes() == (run / "checkpoints" / "last.pt").read_bytes()

    out = tmp_path / "head.safetensors"
    out.write_text("mine")
    code, err = _cli(["dedupe", str(copy), "--out", str(out)], capsys)
    assert code == 2 and "pass --force" in err and out.read_text() == "mine"
    code, err = _cli(["dedupe", str(copy), "--out", str(out), "--force"], capsys)
    assert code == 0, err
    assert out.read_bytes() != b"mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "head.safetensors",
        "model.pt",
    ]  # replaced through a rename: no temporary left


def test_report_refuses_run_folders_and_run_state_and_needs_force(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run)
    for out in (run, run / "checkpoints"):
        code, err = _cli(["report", str(run), "--out", str(out), "--force"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    code, err = _cli(
        [
            "report",
            str(run),
            "--out",
            str(tmp_path / "r"),
            "--results-md",
            str(run / "metrics.jsonl"),
        ],
        capsys,
    )
    assert code == 2 and "never writes over it" in err
    assert _snapshot(run) == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, err = _cli(["report", str(run), "--out", str(mine)], capsys)
    assert code == 2 and "not empty" in err and "--force" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_protected_reason_and_checks_without_a_run(tmp_path: Path) -> None:
    loose = tmp_path / "config.yaml"  # not inside a run: an ordinary file
    loose.write_text("a: 1\n")
    assert protected_reason(loose) is None
    assert check_output_file(loose, force=True) == loose
    with pytest.raises(UserError, match="--force"):
        check_output_file(loose, force=False)
    with pytest.raises(UserError, match="is a folder"):
        check_output_file(tmp_path, force=True)
    with pytest.raises(UserError, match="is a file"):
        check_output_folder(loose, force=True)
    # The command's own default folder (RUN/report) is rewritten without --force.
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("old")
    assert check_output_folder(tmp_path / "report", force=False, default=True)
    with pytest.raises(UserError, match="not empty"):
        check_output_folder(tmp_path / "report", force=False)


def test_demo_refuses_a_folder_that_is_not_an_earlier_demos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text('{"mine": true}')  # the demo would replace this
    (mine / "notes.txt").write_text("keep")
    assert main(["demo", "--out", str(mine), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.txt" in err[0], err
    assert (mine / "summary.json").read_text() == '{"mine": true}'
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    # An earlier demo's folder (only the demo's own names) is accepted: no refusal raised.
    from protossl.demo import check_demo_folder, demo_files

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for name in demo_files():
        (earlier / name).write_text("")
    check_demo_folder(earlier)
