"""`python -m uniformer_edge.models`: parameters and GMACs of a UniFormer variant."""

from __future__ import annotations

import json
import sys

from ..errors import InputError
from .._cli import positive_int, Parser, run
from .info import model_info
from .registry import create_model, from_official_config, get_variant, list_variants


def build_parser() -> Parser:
    p = Parser(
        prog="python -m uniformer_edge.models",
        description="Print the parameter count and GMACs (multiply-adds of convolutions, linear layers "
        "and matrix products, counted once: the paper's per-view convention) of a UniFormer "
        "model at a given clip size.",
    )
    p.add_argument("--variant", default="s", help=f"registered variant: {', '.join(list_variants())} (default s)")
    p.add_argument("--config", help="official config.yaml to build the model from instead of --variant")
    p.add_argument("--checkpoint", help="checkpoint to load (checks that it fits the model)")
    p.add_argument("--num-classes", type=positive_int, default=400, help="classifier size (default 400)")
    p.add_argument("--frames", type=positive_int, default=8, help="frames per clip (default 8)")
    p.add_argument("--size", type=positive_int, default=224, help="square frame size in pixels (default 224)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.size < 32:
        raise InputError(f"need --frames >= 1 and --size >= 32, got {args.frames} and {args.size}")
    if args.config:
        model = from_official_config(args.config)
        name = args.config
    else:
        model = create_model(args.variant, num_classes=args.num_classes)
        name = get_variant(args.variant).name
    if args.checkpoint:
        from .checkpoint import load_checkpoint

        load_checkpoint(model, args.checkpoint)
    info = model_info(model, frames=args.frames, size=args.size)
    if args.json:
        print(
            json.dumps(
                {
                    "model": name,
                    "class": type(model).__name__,
                    "frames": args.frames,
                    "size": args.size,
                    **info.as_dict(),
                }
            )
        )
    else:
        print(f"{name} ({type(model).__name__}) at {args.frames}x{args.size}x{args.size}")
        print(f"  params: {info.params / 1e6:.2f} M ({info.params:,})")
        print(
            f"  GMACs:  {info.gmacs:.3f} per view ("
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(info.gmacs_by_op.items()))
            + ")"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="uniformer_edge.models"))
