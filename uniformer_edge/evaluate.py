"""`python -m uniformer_edge.evaluate`: top-1, top-5, per-class accuracy and the confusion matrix
of a checkpoint; add `torchrun --nproc_per_node N` in front to shard the evaluation."""

from __future__ import annotations

import sys

from ._cli import nonnegative_int, positive_int, Parser, run
from ._io import atomic_write_json, check_output_file
from .calibration import build_dataset
from .engine import cleanup, dataset_num_classes, evaluate, init_distributed
from .models import checkpoint_metadata, create_model


def build_parser() -> Parser:
    p = Parser(
        prog="python -m uniformer_edge.evaluate",
        description="Evaluate a checkpoint on the synthetic benchmark or a labelled video list. Frames, "
        "size and variant default to those stored in training checkpoints of this toolkit.",
    )
    p.add_argument("--variant", help="model variant: xxs, xs, s, b (default: from the checkpoint, else s)")
    p.add_argument("--checkpoint", required=True, help="checkpoint to evaluate")
    p.add_argument("--data", default="synthetic", help="'synthetic', an annotation list, or 'folder'")
    p.add_argument("--root", help="folder the list's paths are relative to")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="synthetic split")
    p.add_argument("--num-clips", type=positive_int, help="synthetic clips to evaluate (default: the split's size)")
    p.add_argument("--class-names", help="file with one class name per line")
    p.add_argument("--frames", type=positive_int, help="frames per clip")
    p.add_argument("--size", type=positive_int, help="frame size in pixels")
    p.add_argument("--sampling", default="uniform", choices=["uniform", "strided"], help="frame sampling")
    p.add_argument("--sampling-rate", type=positive_int, default=8, help="stride for strided sampling")
    p.add_argument("--batch-size", type=positive_int, default=16, help="clips per forward pass (per process)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="synthetic benchmark seed")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:
        check_output_file(args.json)  # before the work, not after it
    ctx = init_distributed(args.device)
    try:
        stored = checkpoint_metadata(args.checkpoint)
        cfg = stored.get("cfg") if isinstance(stored.get("cfg"), dict) else {}
        variant = args.variant or stored.get("variant") or "s"
        frames = cfg.get("frames", 8) if args.frames is None else args.frames
        size = cfg.get("size", 224) if args.size is None else args.size
        dataset = build_dataset(
            args.data,
            args.split,
            frames=frames,
            size=size,
            root=args.root,
            num_clips=args.num_clips,
            seed=args.seed,
            class_names=args.class_names,
            sampling=args.sampling,
            sampling_rate=args.sampling_rate,
        )
        num_classes = dataset_num_classes(dataset)
        model = create_model(variant, num_classes=num_classes, checkpoint=args.checkpoint, new_head=False)
        model.to(ctx.device)
        metrics = evaluate(model, dataset, num_classes, args.batch_size, ctx)
    finally:
        cleanup(ctx)
    if ctx.is_main:
        print(f"{variant} on {dataset.describe()}: {metrics.summary()}")
        names = metrics.classes or [str(c) for c in range(num_classes)]
        for name, acc in zip(names, metrics.per_class):
            print(f"  {name:<28} {'-' if acc is None else f'{100 * acc:6.2f}%'}")
        if args.json:
            atomic_write_json(
                args.json,
                {
                    "variant": variant,
                    "checkpoint": args.checkpoint,
                    "frames": frames,
                    "size": size,
                    "data": dataset.describe(),
                    **metrics.as_dict(),
                },
            )
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="uniformer_edge.evaluate"))
