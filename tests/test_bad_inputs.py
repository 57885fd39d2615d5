"""Bad input gives one line naming the file, key or value, a non-zero exit and no output:
non-finite weights, frames and losses, contradictory settings, counts, outputs and damaged files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import TINY_LIGHT
from uniformer_edge._cli import run
from uniformer_edge._io import atomic_dir, remove_stale_partials
from uniformer_edge.models import CheckpointError, create_model

LIGHT = {k: v for k, v in TINY_LIGHT.items() if k != "num_classes"}
TINY_RUN = dict(
    variant="xxs",
    frames=4,
    size=32,
    num_train_clips=16,
    num_val_clips=8,
    batch_size=8,
    warmup_epochs=0.5,
    label_smoothing=0.0,
)


def _mains():
    from uniformer_edge.benchmark.__main__ import main as benchmark
    from uniformer_edge.evaluate import main as evaluate
    from uniformer_edge.export.__main__ import main as export
    from uniformer_edge.quantize.__main__ import main as quantize
    from uniformer_edge.train import main as train

    return dict(train=train, evaluate=evaluate, quantize=quantize, export=export, benchmark=benchmark)


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


@pytest.mark.parametrize(
    "command,argv,message",
    [
        ("train", ["--frames", "0"], "--frames: must be a positive integer, got 0"),
        ("train", ["--size", "0"], "--size: must be a positive integer"),
        ("train", ["--epochs", "-1"], "--epochs: must be a positive integer, got -1"),
        ("train", ["--batch-size", "0"], "--batch-size: must be a positive integer"),
        ("train", ["--lr", "nan"], "--lr: must be a positive number"),
        ("evaluate", ["--checkpoint", "x.pth", "--batch-size", "0"], "--batch-size: must be a positive integer"),
        ("evaluate", ["--checkpoint", "x.pth", "--num-clips", "-1"], "--num-clips: must be a positive integer"),
        ("quantize", ["--variant", "xxs", "--num-calib", "0"], "--num-calib: must be a positive integer"),
        ("export", ["--variant", "xxs", "--out", "x", "--check-clips", "0"], "--check-clips: must be a positive"),
        ("benchmark", ["--out", "x", "--threads", "0"], "--threads: must be a positive integer, got 0"),
        ("benchmark", ["--out", "x", "--runs", "two"], "--runs: 'two' is not an integer"),
    ],
)
def test_counts_are_validated_at_parse_time(command, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _mains()[command](argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_library_jobs_refuse_zero_sizes(tmp_path):
    from uniformer_edge.engine import TrainConfig, train
    from uniformer_edge.export import ExportJob
    from uniformer_edge.quantize import QuantizeJob

    with pytest.raises(ValueError, match="--frames must be a positive integer, got 0"):
        ExportJob(variant="xxs", frames=0, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="--size must be a positive integer, got 0"):
        QuantizeJob(variant="xxs", size=0, out=str(tmp_path / "q"))
    with pytest.raises(ValueError, match="--epochs must be a positive integer, got -1"):
        train(TrainConfig(**TINY_RUN, epochs=-1, out=str(tmp_path / "t")), progress=False)
    assert not (tmp_path / "t" / "last.pth").exists()


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("nan") / "nan.pth"
    model = create_model("xxs", num_classes=12, **LIGHT)
    state = model.state_dict()
    state["head.weight"][0, 0] = float("nan")
    state["blocks1.0.attn.weight"].fill_(float("inf"))
    torch.save({"model_state": state}, path)
    return path


def test_non_finite_weights_are_refused(nan_checkpoint, tmp_path, capsys):
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) hold NaN or infinite values: .*head.weight"):
        create_model("xxs", num_classes=12, checkpoint=nan_checkpoint, **LIGHT)
    mains = _mains()
    assert (
        run(
            mains["evaluate"],
            [
                "--checkpoint",
                str(nan_checkpoint),
                "--variant",
                "xxs",
                "--frames",
                "4",
                "--size",
                "32",
                "--num-clips",
                "4",
            ],
        )
        == 2
    )
    assert (
        run(mains["export"], ["--variant", "xxs", "--checkpoint", str(nan_checkpoint), "--out", str(tmp_path / "x")])
        == 2
    )
    assert (
        run(
            mains["quantize"],
            [
                "--variant",
                "xxs",
                "--checkpoint",
                str(nan_checkpoint),
                "--frames",
                "4",
                "--size",
                "32",
                "--out",
                str(tmp_path / "q"),
            ],
        )
        == 2
    )
    errors = _errors(capsys)
    assert len(errors) == 3 and all(str(nan_checkpoint) in e and "NaN" in e for e in errors), errors
    assert not (tmp_path / "x").exists() and not (tmp_path / "q").exists()


def test_non_finite_frames_name_the_clip(tmp_path, capsys):
    from uniformer_edge.calibration import build_dataset

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "ok.npy", np.random.rand(8, 20, 20, 3).astype(np.float32))
    bad = np.random.rand(8, 20, 20, 3).astype(np.float32)
    bad[3, 5, 5, 1] = np.nan
    np.save(tmp_path / "b" / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"bad\.npy: 1 frame values are NaN or infinite"):
        build_dataset("folder", root=str(tmp_path), frames=4, size=16)
    checkpoint = tmp_path / "ck.pth"
    torch.save({"model_state": create_model("xxs", num_classes=2, **LIGHT).state_dict()}, checkpoint)
    assert (
        run(
            _mains()["evaluate"],
            [
                "--checkpoint",
                str(checkpoint),
                "--variant",
                "xxs",
                "--data",
                "folder",
                "--root",
                str(tmp_path),
                "--frames",
                "4",
                "--size",
                "32",
            ],
        )
        == 2
    )
    assert "bad.npy" in _errors(capsys)[0]


def test_training_stops_at_the_first_non_finite_loss(tmp_path, monkeypatch):
    from uniformer_edge.engine import NonFiniteLoss, TrainConfig, train
    from uniformer_edge.engine import training

    real = training.classification_loss
    calls = []

    def poisoned(output, labels, smoothing):
        calls.append(1)
        loss = real(output, labels, smoothing)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(training, "classification_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match="epoch 1/2, step 2: the training loss is nan"):
        train(TrainConfig(**TINY_RUN, epochs=2, out=str(tmp_path / "run")), progress=False)
    assert not (tmp_path / "run" / "last.pth").exists() and not (tmp_path / "run" / "best.pth").exists()


def test_evaluate_refuses_a_head_of_another_class_count(tmp_path, capsys):
    path = tmp_path / "ten.pth"
    torch.save({"model_state": create_model("xxs", num_classes=10, **LIGHT).state_dict()}, path)
    with pytest.raises(CheckpointError, match="another class count"):
        create_model("xxs", num_classes=12, checkpoint=path, new_head=False, **LIGHT)
    assert (
        run(
            _mains()["evaluate"],
            ["--checkpoint", str(path), "--variant", "xxs", "--frames", "4", "--size", "32", "--num-clips", "4"],
        )
        == 2
    )
    assert "random head" in _errors(capsys)[0]


def test_outputs_are_checked_before_the_work(tmp_path, capsys):
    from uniformer_edge.engine import TrainConfig, train

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        train(TrainConfig(**TINY_RUN, epochs=1, out=str(blocker)), progress=False)
    path = tmp_path / "ck.pth"
    torch.save({"model_state": create_model("xxs", num_classes=12, **LIGHT).state_dict()}, path)
    started = time.time()
    assert run(_mains()["evaluate"], ["--checkpoint", str(path), "--variant", "xxs", "--json", str(tmp_path)]) == 2
    assert time.time() - started < 5 and "is a directory" in _errors(capsys)[0]


def test_resume_errors_and_contradicting_flags(tmp_path):
    from uniformer_edge.engine import TrainConfig, train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(create_model("xxs", num_classes=12, **LIGHT).state_dict(), run_dir / "last.pth")  # a bare state dict
    with pytest.raises(ValueError, match="is not a training checkpoint of this toolkit"):
        train(TrainConfig(**TINY_RUN, out=str(run_dir)), resume=True, progress=False)
    (run_dir / "last.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        train(TrainConfig(**TINY_RUN, out=str(run_dir)), resume=True, progress=False)
    good = tmp_path / "good"
    train(TrainConfig(**TINY_RUN, epochs=2, out=str(good)), progress=False, stop_after=1)
    with pytest.warns(UserWarning, match=r"ignoring variant \('s'; the run has 'xxs'\), batch_size"):
        train(
            TrainConfig(**dict(TINY_RUN, variant="s", batch_size=4), epochs=2, out=str(good)),
            resume=True,
            progress=False,
        )
    state = torch.load(good / "last.pth", weights_only=True)
    state["model_state"] = create_model("s", num_classes=12).state_dict()  # another variant's weights
    torch.save(state, good / "last.pth")
    with pytest.raises(ValueError, match="does not fit the UniFormer-XXS run"):
        train(TrainConfig(**TINY_RUN, epochs=2, out=str(good)), resume=True, progress=False)


def test_benchmark_merge_refuses_other_documents_and_keeps_one_copy(tmp_path, capsys):
    from uniformer_edge.benchmark import merge_reports

    quantize_report = tmp_path / "q.json"
    quantize_report.write_text(json.dumps({"schema": 1, "recipe": "w8a8", "agreement": {}}))
    empty = tmp_path / "empty.json"
    device = {"hostname": "h", "cpu": "c", "threads": 1, "versions": {}}
    empty.write_text(json.dumps({"schema": 1, "device": device, "rows": [], "groups": [], "backends": {}}))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema": 1, "artifacts": []}))
    for path, message in (
        (quantize_report, "a quantize report"),
        (empty, "without rows"),
        (manifest, "an export manifest"),
    ):
        assert run(_mains()["benchmark"], ["--merge", str(path), "--out", str(tmp_path / "m")]) == 2
        assert message in _errors(capsys)[0]
    row = {
        "variant": "s",
        "input": "8x224",
        "artifact": "a",
        "precision": "fp32",
        "backend": "torch",
        "not_available": "why",
    }
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"schema": 1, "device": device, "rows": [row], "groups": [], "backends": {}}))
    with pytest.warns(UserWarning, match="kept once"):
        merged = merge_reports([one, one])
    assert len(merged["devices"]) == 1


def test_damaged_manifest_is_one_line(tmp_path, capsys):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "manifest.json").write_text("{broken")
    assert run(_mains()["benchmark"], [str(folder), "--out", str(tmp_path / "b")]) == 2
    (folder / "manifest.json").write_text(
        json.dumps(
            {
                "schema": 1,
                "variant": "s",
                "input": {},
                "source": {},
                "num_classes": 2,
                "artifacts": [{"path": "../x.onnx", "sha256": "0"}],
            }
        )
    )
    assert run(_mains()["benchmark"], [str(folder), "--out", str(tmp_path / "b")]) == 2
    errors = _errors(capsys)
    assert "is not valid JSON" in errors[0] and "is not a file name inside" in errors[1]


def test_stale_partial_outputs_of_killed_runs_are_removed(tmp_path):
    """A run killed during its final write (SIGKILL) leaves a hidden temporary folder; the next
    write of that output removes it, and leaves a live process's alone."""
    out = tmp_path / "result"
    code = (
        "import os, sys; sys.path.insert(0, %r)\n"
        "from uniformer_edge._io import atomic_dir\n"
        "with atomic_dir(%r) as tmp:\n"
        "    (tmp / 'half').write_text('x')\n"
        "    os.kill(os.getpid(), 9)\n"
    ) % (str(__import__("pathlib").Path(__file__).parents[1]), str(out))
    subprocess.run([sys.executable, "-c", code], check=False)
    stale = list(tmp_path.glob(".result.*.partial"))
    assert len(stale) == 1 and not out.exists()
    live = tmp_path / f".result.{os.getppid()}.abc.partial"  # our parent is alive
    live.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "done").write_text("y")
    assert (out / "done").exists() and not stale[0].exists() and live.exists()
    assert remove_stale_partials(out) == []


def test_cli_prints_toolkit_errors_as_one_line_and_lets_bugs_raise(capsys):
    from uniformer_edge.errors import ExportError, InputError

    def failing(error):
        def main(argv):
            raise error

        return main

    assert run(failing(InputError("bad --frames")), []) == 2
    assert run(failing(ExportError("x.onnx misses its threshold")), []) == 2
    assert _errors(capsys) == [
        "uniformer_edge: error: bad --frames",
        "uniformer_edge: error: x.onnx misses its threshold",
    ]
    # an internal ValueError is a bug, not bad input: it keeps its traceback
    with pytest.raises(ValueError, match="internal"):
        run(failing(ValueError("internal invariant")), [])
