"""ExecuTorch export: XNNPACK-delegated `.pte` programs lowered from the XNNPACK form
(`uniformer_edge.forms.xnnpack_form`), float or quantized by `uniformer_edge.quantize.xnnpack`,
and run with the ExecuTorch runtime for parity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from .._io import atomic_write

__all__ = ["executorch_available", "lower_executorch", "load_executorch", "run_executorch"]


def executorch_available() -> Optional[str]:
    """None when ExecuTorch can export and run here, else the reason it cannot."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.runtime import Runtime  # noqa: F401
    except Exception as err:  # ImportError, or a runtime library that fails to load
        return (
            f"ExecuTorch is not installed ({err.__class__.__name__}: {err}); pip install 'uniformer-edge[executorch]'"
        )
    return None


def lower_executorch(model: nn.Module, example: Tensor, path) -> dict[str, int]:
    """Lower `model` (the XNNPACK form, float or PT2E-converted) to an XNNPACK `.pte` at
    `path`; returns the op census of the lowered graph (delegate calls and any ops left on
    ExecuTorch's portable kernels)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(torch.export.export(model, (example[:1],)), partitioner=[XnnpackPartitioner()])
    counts: dict[str, int] = {}
    for node in edge.exported_program().graph.nodes:
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            counts[name] = counts.get(name, 0) + 1
    buffer = edge.to_executorch().buffer
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer))
    return dict(sorted(counts.items()))


def load_executorch(path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(Path(path)).load_method("forward")


def run_executorch(method, clips: Tensor) -> Tensor:
    """Logits for `clips`, one clip per call (the program's batch is one)."""
    return torch.cat([method.execute((clip[None].contiguous(),))[0] for clip in clips]).float()
