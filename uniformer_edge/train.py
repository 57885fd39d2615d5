"""`python -m uniformer_edge.train`: train a UniFormer variant on the synthetic benchmark or a
video list; add `torchrun --nproc_per_node N` in front to run with DistributedDataParallel."""

from __future__ import annotations

import sys
from dataclasses import fields

from ._cli import nonnegative_float, nonnegative_int, positive_float, positive_int, Parser, run
from .engine import TrainConfig, cleanup, init_distributed, train


def build_parser() -> Parser:
    d = TrainConfig()
    p = Parser(
        prog="python -m uniformer_edge.train",
        description="Train a UniFormer video classifier. Saves OUT/last.pth after every epoch and "
        "OUT/best.pth at the best validation top-1 (official checkpoint format), and "
        "OUT/history.json. Under torchrun it runs with DistributedDataParallel "
        "(gloo on CPU, NCCL on GPU); --batch-size is the global batch.",
    )
    p.add_argument("--variant", default=d.variant, help="model variant: xxs, xs, s, b (default %(default)s)")
    p.add_argument(
        "--data",
        default=d.data,
        help="'synthetic' (built-in benchmark), an annotation list 'path label' per line, or "
        "'folder' for ROOT/<class>/<video> (default %(default)s)",
    )
    p.add_argument("--root", help="folder the annotation list's paths are relative to")
    p.add_argument("--val-data", help="validation list (default: the synthetic val split for --data synthetic)")
    p.add_argument("--val-root", help="folder the validation list's paths are relative to")
    p.add_argument("--class-names", help="file with one class name per line")
    p.add_argument("--frames", type=positive_int, default=d.frames, help="frames per clip (default %(default)s)")
    p.add_argument("--size", type=positive_int, default=d.size, help="frame size in pixels (default %(default)s)")
    p.add_argument(
        "--sampling",
        default=d.sampling,
        choices=["uniform", "strided"],
        help="frame sampling for video files (default %(default)s)",
    )
    p.add_argument("--sampling-rate", type=positive_int, default=d.sampling_rate, help="stride for strided sampling")
    p.add_argument("--num-train-clips", type=positive_int, help="synthetic training clips (default 9600)")
    p.add_argument("--num-val-clips", type=positive_int, help="synthetic validation clips (default 600)")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="epochs (default %(default)s)")
    p.add_argument(
        "--batch-size", type=positive_int, default=d.batch_size, help="global batch size (default %(default)s)"
    )
    p.add_argument("--lr", type=positive_float, default=d.lr, help="peak learning rate (default %(default)s)")
    p.add_argument(
        "--min-lr", type=nonnegative_float, default=d.min_lr, help="final learning rate (default %(default)s)"
    )
    p.add_argument("--weight-decay", type=nonnegative_float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=d.warmup_epochs, help="linear warm-up length")
    p.add_argument("--label-smoothing", type=nonnegative_float, default=d.label_smoothing, help="label smoothing")
    p.add_argument("--drop-path", type=nonnegative_float, default=d.drop_path, help="stochastic depth rate")
    p.add_argument(
        "--layer-scale",
        type=positive_float,
        metavar="INIT",
        help="light models: LayerScale with this initial value (the official _ls form, e.g. 0.1)",
    )
    p.add_argument("--clip-grad", type=nonnegative_float, default=d.clip_grad, help="gradient-norm clip (0: off)")
    p.add_argument("--checkpoint", help="initialise from this checkpoint (a head of another size is re-sized)")
    p.add_argument("--out", default=d.out, help="output folder (default %(default)s)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out exactly where it stopped (its saved settings are used)",
    )
    p.add_argument(
        "--stop-after",
        type=positive_int,
        metavar="N",
        help="end this invocation after N epochs (continue later with --resume)",
    )
    p.add_argument("--force", action="store_true", help="start over even if --out holds a run")
    p.add_argument("--seed", type=nonnegative_int, default=d.seed, help="seed for data order and initialisation")
    p.add_argument("--num-workers", type=nonnegative_int, default=d.num_workers, help="data-loading worker processes")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    return p


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(argv))
    resume, force, stop_after = args.pop("resume"), args.pop("force"), args.pop("stop_after")
    cfg = TrainConfig(**{f.name: args[f.name] for f in fields(TrainConfig) if f.name in args})
    ctx = init_distributed(cfg.device)
    try:
        summary = train(cfg, resume=resume, force=force, ctx=ctx, stop_after=stop_after)
    finally:
        cleanup(ctx)
    if ctx.is_main:
        print(
            f"best validation top-1: {100 * summary['best_top1']:.2f}%  checkpoints: {summary['best']}, "
            f"{summary['last']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="uniformer_edge.train"))
