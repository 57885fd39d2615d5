"""Training and evaluation: loss goes down, resume is exact, torchrun (gloo) agrees with one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from uniformer_edge.engine import TrainConfig, top1_drop, topk_accuracy, train, warmup_cosine

TINY_RUN = dict(
    variant="xxs",
    frames=4,
    size=32,
    num_train_clips=16,
    num_val_clips=12,
    batch_size=8,
    warmup_epochs=0.5,
    label_smoothing=0.0,
)


def test_training_reduces_loss(tmp_path):
    summary = train(TrainConfig(**TINY_RUN, epochs=6, lr=2e-3, out=str(tmp_path / "run")), progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    saved = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert {"model_state", "optimizer_state", "epoch", "cfg"} <= set(saved) and saved["epoch"] == 5
    best = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert best["epoch"] == max(range(6), key=lambda e: (summary["history"][e]["val_top1"], -e))
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == summary["history"]


def test_resume_reproduces_uninterrupted_run(tmp_path):
    cfg = dict(TINY_RUN, lr=1e-3, drop_path=0.1)  # stochastic depth: the RNG state must be restored too
    train(TrainConfig(**cfg, epochs=3, out=str(tmp_path / "straight")), progress=False)
    train(TrainConfig(**cfg, epochs=3, out=str(tmp_path / "split")), progress=False, stop_after=1)
    assert torch.load(tmp_path / "split" / "last.pth", weights_only=True)["epoch"] == 0
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainConfig(**cfg, epochs=3, out=str(tmp_path / "split")), progress=False)
    # Settings come from the checkpoint: a different lr given on resume is ignored.
    train(TrainConfig(**dict(cfg, lr=0.5), out=str(tmp_path / "split")), resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_resume_without_run_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint .*last.pth"):
        train(TrainConfig(**TINY_RUN, out=str(tmp_path)), resume=True, progress=False)


def test_warmup_cosine():
    f = warmup_cosine(100, 10, 0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.505, abs=0.01) and f(100) == pytest.approx(0.01)


def test_long_evaluation_hands_freed_heap_back(monkeypatch):
    """collect_logits returns the heap's free pages to the system every TRIM_EVERY batches (a
    96000-clip scoring grew to 23 GB without it), and gets the same logits either way; on glibc
    the call is real."""
    import platform

    from uniformer_edge import _memory
    from uniformer_edge.calibration import build_dataset
    from uniformer_edge.engine import evaluation

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert _memory.release_free_heap() is True
    data = build_dataset("synthetic", "test", num_clips=2 * evaluation.TRIM_EVERY + 3, frames=2, size=16, seed=0)
    model = lambda clips: clips.mean(dim=(2, 3, 4))  # noqa: E731
    plain = evaluation.collect_logits(model, data, batch_size=1, progress=False)
    calls = []
    monkeypatch.setattr(evaluation, "release_free_heap", lambda: calls.append(1) or True)
    trimmed = evaluation.collect_logits(model, data, batch_size=1, progress=False)
    assert len(calls) == 2
    assert torch.equal(plain[0], trimmed[0]) and torch.equal(plain[1], trimmed[1])


def test_top1_drop_paired_standard_error():
    labels = torch.zeros(100, dtype=torch.long)
    right, wrong = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    reference = torch.stack([right] * 100)
    # 10 clips lost, 4 gained: drop 6 points; per-clip differences are +1 x10, -1 x4, 0 x86
    other = torch.stack([wrong] * 10 + [right] * 90)
    reference[10:14] = wrong
    out = top1_drop(reference, other, labels)
    assert (out["lost"], out["gained"]) == (10, 4)
    assert out["drop_points"] == pytest.approx(6.0)
    variance = (14 - 100 * 0.06**2) / 99  # unbiased variance of the per-clip differences
    assert out["drop_se_points"] == pytest.approx(100 * (variance / 100) ** 0.5)
    assert top1_drop(reference, reference, labels)["drop_se_points"] == 0
    # tied logits (as int8 outputs give) count as in topk_accuracy
    tied = torch.randint(0, 3, (200, 12)).float()
    labels = torch.randint(0, 12, (200,))
    assert top1_drop(reference.new_zeros(200, 12), tied, labels)["drop_points"] == pytest.approx(
        100 * (topk_accuracy(reference.new_zeros(200, 12), labels, 1) - topk_accuracy(tied, labels, 1))
    )


def _run(args, nproc=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(29500 + os.getpid() % 1000),
        ]
        if nproc
        else [sys.executable]
    )
    out = subprocess.run(launcher + ["-m", *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_torchrun_train_and_evaluate(tmp_path):
    run = tmp_path / "ddp"
    common = [
        "--variant",
        "xxs",
        "--frames",
        "4",
        "--size",
        "32",
        "--num-train-clips",
        "16",
        "--num-val-clips",
        "12",
        "--batch-size",
        "8",
        "--epochs",
        "2",
    ]
    _run(["uniformer_edge.train", *common, "--out", str(run)], nproc=2)
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["epoch"] == 1 and not any(k.startswith("module.") for k in saved["model_state"])
    evaluate = [
        "uniformer_edge.evaluate",
        "--checkpoint",
        str(run / "best.pth"),
        "--split",
        "test",
        "--num-clips",
        "25",
        "--batch-size",
        "4",
    ]
    _run(evaluate + ["--json", str(tmp_path / "one.json")])
    _run(evaluate + ["--json", str(tmp_path / "two.json")], nproc=2)
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["num_clips"] == two["num_clips"] == 25  # odd count: nothing padded or counted twice
    assert one["confusion"] == two["confusion"]
    assert one["top1"] == two["top1"] and one["top5"] == two["top5"]


def test_steps_with_overflowing_gradients_are_skipped_and_a_run_of_them_stops_training():
    """A finite loss whose gradient is not finite (the light models' pruning can produce one in
    fp32) leaves the weights untouched; good steps still train; too many in a row stop."""
    from uniformer_edge.engine import NonFiniteLoss, init_distributed, train_one_epoch
    from uniformer_edge.engine.training import MAX_SKIPPED_STEPS

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)

    def loss_fn(m, clips, labels):
        if labels.item() == 1:  # sqrt at 0: a finite loss (0) with a NaN gradient
            return torch.sqrt((m.weight - m.weight.detach()).abs()).sum()
        return ((m.weight - 1.0) ** 2).sum()

    def batches(labels):
        return [(torch.zeros(1, 1, 1, 1, 1), torch.tensor([y])) for y in labels]

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = init_distributed()
    with pytest.warns(UserWarning, match="skipped 1 of 2 steps"):
        train_one_epoch(model, batches([1, 0]), opt, None, ctx, loss_fn=loss_fn, clip_grad=1.0, desc="e")
    assert torch.isfinite(model.weight).all() and model.weight.item() == pytest.approx(0.1)  # the good step, clipped
    with pytest.raises(NonFiniteLoss, match="overflowed in 21 steps in a row"):
        train_one_epoch(
            model, batches([1] * (MAX_SKIPPED_STEPS + 1)), opt, None, ctx, loss_fn=loss_fn, clip_grad=None, desc="e"
        )
    assert model.weight.item() == pytest.approx(0.1)


@pytest.mark.slow
def test_reference_recipe_leaves_chance_on_this_cpu():
    """The synthetic reference model's recipe (benchmarks/common.py) must start learning on every
    CPU type: its first 700 steps, on the recipe's own schedule, bring the training loss clearly
    below chance. A recipe on the edge stays at chance for whole epochs on some CPUs, whose
    rounding alone decides when (or whether) the model escapes the plateau."""
    import math

    from torch.utils.data import DataLoader

    from uniformer_edge.calibration import build_dataset
    from uniformer_edge.engine import init_distributed, train_one_epoch
    from uniformer_edge.engine.training import classification_loss, epoch_batches, make_optimizer
    from uniformer_edge.models import create_model

    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import REFERENCE_RECIPE

    cfg = TrainConfig(**REFERENCE_RECIPE)
    train_set = build_dataset(
        "synthetic", "train", frames=cfg.frames, size=cfg.size, seed=cfg.seed, num_clips=cfg.num_train_clips
    )
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.variant, num_classes=12, layer_scale=cfg.layer_scale)
    model.to(memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    per_epoch = len(train_set) // cfg.batch_size
    schedule = warmup_cosine(cfg.epochs * per_epoch, round(cfg.warmup_epochs * per_epoch), cfg.min_lr / cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ctx = init_distributed()
    batches = epoch_batches(len(train_set), cfg.batch_size, cfg.seed, 0, ctx)

    def mean_loss_of_steps(first, end):
        return train_one_epoch(
            model,
            DataLoader(train_set, batch_sampler=batches[first:end]),
            optimizer,
            scheduler,
            ctx,
            loss_fn=lambda m, x, y: classification_loss(m(x), y, cfg.label_smoothing),
            clip_grad=cfg.clip_grad,
            desc="reference recipe",
        )

    mean_loss_of_steps(0, 600)
    chance = math.log(12)  # label smoothing included: a uniform prediction scores exactly ln 12
    last = mean_loss_of_steps(600, 700)
    assert last < chance - 0.15, f"mean training loss of steps 601-700 is {last:.3f}; chance is {chance:.3f}"
