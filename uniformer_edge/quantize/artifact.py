"""The quantize command's output folder (`quantized.pt2` + `quant_config.json`), read safely.

A `.pt2` file is a program: `torch.export.load` unpickles with `weights_only=False` any
weight or constant the archive marks `use_pickle`, the legacy `data/weights/*.pt` layout and
opaque or TorchScript object constants; it retries sample inputs with `weights_only=False`,
evaluates symbolic-shape strings with `sympy.sympify` (Python `eval`), and `.module()` `exec`s
the archive's guard code. `load_program` therefore inspects the archive's bytes first and refuses
every entry that would reach one of those paths, then hands torch the same bytes in memory (no
second read of the file that could differ from what was checked). The SHA-256 recorded in
`quant_config.json` is verified too, which catches damaged or swapped files; it is no defence
against whoever hands over the folder (they can rewrite both), the inspection is.
"""

from __future__ import annotations

import io
import json
import operator
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch.export import ExportedProgram

from ..errors import InputError


__all__ = [
    "PROGRAM_FILE",
    "CONFIG_FILE",
    "ArtifactError",
    "read_quantize_config",
    "check_program_archive",
    "verify_program",
    "load_program",
    "load_quantized",
]

PROGRAM_FILE, CONFIG_FILE = "quantized.pt2", "quant_config.json"
_REQUIRED_KEYS = ("variant", "method", "quant_config", "job", "input_shape", "num_classes", "program_sha256", "model")


class ArtifactError(InputError):
    """A quantize folder or program file that is damaged, altered or unsafe to load."""


def read_quantize_config(folder) -> dict:
    """`quant_config.json` of a quantize folder, with a one-line error for a missing folder or
    file, bad JSON or missing keys."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"quantize directory not found: {folder}")
    path, program = folder / CONFIG_FILE, folder / PROGRAM_FILE
    for p in (path, program):
        if not p.is_file():
            raise FileNotFoundError(
                f"{folder} has no {p.name}: is it the output of `python -m uniformer_edge.quantize`?"
            )
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{path} holds a {type(cfg).__name__}, not a quantize configuration")
    missing = [k for k in _REQUIRED_KEYS if k not in cfg]
    if missing:
        older = {"program_sha256", "model"}
        hint = " (written by an older uniformer-edge: quantize again)" if set(missing) <= older else ""
        raise ArtifactError(f"{path} lacks {', '.join(missing)}{hint}")
    shape = cfg["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 5 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ArtifactError(f"{path}: input_shape must be 5 positive integers, got {shape!r}")
    if not isinstance(cfg["quant_config"], dict) or "recipe" not in cfg["quant_config"]:
        raise ArtifactError(f"{path}: quant_config has no recipe")
    if not isinstance(cfg["job"], dict):
        raise ArtifactError(f"{path}: job must be an object")
    return cfg


def load_quantized(folder) -> tuple[dict, ExportedProgram]:
    """The configuration and the program of a quantize folder, hash-checked and inspected."""
    cfg = read_quantize_config(folder)
    return cfg, load_program(Path(folder) / PROGRAM_FILE, cfg["program_sha256"])


def load_program(path, sha256: Optional[str] = None) -> ExportedProgram:
    """Load a saved program without unpickling anything it carries (see the module docstring);
    `sha256`, when given, must match the file's. Raises `ArtifactError` naming the file and the
    entry that is refused."""
    path = Path(path)
    data = verify_program(path, sha256)
    import torchao.quantization.pt2e  # noqa: F401  (registers the quantize/dequantize ops the program calls)

    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as err:  # a malformed archive: torch's own message, on one line
        raise ArtifactError(
            f"{path} cannot be loaded as a program: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
        ) from None
    _check_loaded_targets(program, path)
    return program


def verify_program(path, sha256: Optional[str] = None) -> bytes:
    """The bytes of a program file that matches `sha256` (when given) and passes
    `check_program_archive`, without loading it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"program file not found: {path}")
    data = path.read_bytes()
    if sha256 is not None:
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ArtifactError(
                f"{path} does not match the SHA-256 recorded beside it ({digest[:12]}..., recorded "
                f"{str(sha256)[:12]}...): it was modified after quantization"
            )
    check_program_archive(data, path)
    return data


# -- inspection ----------------------------------------------------------------------------
_FIXED_ENTRIES = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    "models/model.json",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
    "data/sample_inputs/model.pt",
}
_PAYLOAD = {"data/weights/": re.compile(r"weight_\d+"), "data/constants/": re.compile(r"tensor_\d+")}
_OPERATOR_TARGETS = {
    "getitem",
    "add",
    "sub",
    "mul",
    "floordiv",
    "truediv",
    "mod",
    "neg",
    "pow",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and_",
    "or_",
    "not_",
}
_TARGET = re.compile(r"torch\.ops\.[A-Za-z_]\w*\.[A-Za-z_]\w*(\.[A-Za-z_]\w*)?")
# Symbolic-shape expressions are parsed by sympy.sympify, i.e. eval: allow sympy's arithmetic on
# shape symbols and nothing that could name a Python object.
_EXPR_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|('[a-z]+\d*')|([A-Za-z_]\w*)|(\*\*|[-+*/(),=<>%]))")
_EXPR_NAMES = {
    "Symbol",
    "Integer",
    "Rational",
    "Float",
    "Add",
    "Mul",
    "Pow",
    "floor",
    "ceiling",
    "Eq",
    "Ne",
    "Lt",
    "Le",
    "Gt",
    "Ge",
    "And",
    "Or",
    "Not",
    "positive",
    "integer",
    "nonnegative",
    "real",
    "finite",
    "True",
    "False",
    "oo",
    "Max",
    "Min",
    "Mod",
    "Abs",
    "FloorDiv",
    "CeilDiv",
    "CleanDiv",
    "PythonMod",
    "ModularIndexing",
    "Where",
    "FloorToInt",
    "CeilToInt",
    "TruncToInt",
    "IntTrueDiv",
    "FloatTrueDiv",
    "PowByNatural",
    "LShift",
    "RShift",
    "ToFloat",
    "Identity",
}
_SYMBOL = re.compile(r"[a-z]+\d+")


def check_program_archive(data: bytes, name="program") -> None:
    """Refuse an archive that `torch.export.load` would unpickle from, or that carries code
    (guard code, extension operators, object constants, AOTInductor libraries)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = [i.filename for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise ArtifactError(f"{name} is not a program archive (a .pt2 zip file): {err}") from None
    roots = {e.split("/", 1)[0] for e in entries}
    if len(roots) != 1 or any("/" not in e for e in entries):
        raise ArtifactError(f"{name} is not a torch.export archive (entries under one folder expected)")
    root = roots.pop() + "/"
    files = {e[len(root) :] for e in entries}

    def refuse(entry: str, why: str):
        raise ArtifactError(
            f"{name}: refusing entry {entry!r}: {why}; a program file is code, load only programs you made or trust"
        )

    for entry in sorted(files):
        folder, _, base = entry.rpartition("/")
        if entry in _FIXED_ENTRIES or (folder + "/" in _PAYLOAD and _PAYLOAD[folder + "/"].fullmatch(base)):
            continue
        if entry in ("data/weights/model.pt", "data/constants/model.pt"):
            refuse(entry, "the legacy layout is one pickle that torch loads with weights_only=False")
        if base.startswith(("custom_obj_", "opaque_obj_")):
            refuse(entry, "object constants are unpickled on load")
        refuse(entry, "not part of a plain exported program (expected only its graph, weight and constant tensors)")
    for required in (
        "archive_format",
        "models/model.json",
        "data/weights/model_weights_config.json",
        "data/constants/model_constants_config.json",
    ):
        if required not in files:
            raise ArtifactError(f"{name}: archive has no {required}")
    read = lambda entry: archive.read(root + entry)  # noqa: E731
    if read("archive_format") != b"pt2":
        raise ArtifactError(f"{name}: archive_format is not pt2")
    for kind, config_entry in (
        ("weights", "data/weights/model_weights_config.json"),
        ("constants", "data/constants/model_constants_config.json"),
    ):
        config = _json(read(config_entry), name, config_entry).get("config")
        if not isinstance(config, dict):
            raise ArtifactError(f"{name}: {config_entry} has no config mapping")
        pattern = _PAYLOAD[f"data/{kind}/"]
        for fqn, meta in config.items():
            if not isinstance(meta, dict):
                raise ArtifactError(f"{name}: {config_entry} entry {fqn!r} is not an object")
            if meta.get("use_pickle"):
                refuse(
                    f"data/{kind}/{meta.get('path_name')} ({fqn})",
                    "marked use_pickle: torch would unpickle it with weights_only=False",
                )
            path_name = meta.get("path_name")
            if (
                not isinstance(path_name, str)
                or not pattern.fullmatch(path_name)
                or f"data/{kind}/{path_name}" not in files
                or meta.get("tensor_meta") is None
            ):
                raise ArtifactError(f"{name}: {config_entry} entry {fqn!r} names no tensor payload of this archive")
    if "data/sample_inputs/model.pt" in files:
        _check_sample_inputs(read("data/sample_inputs/model.pt"), name)
    _check_graph(_json(read("models/model.json"), name, "models/model.json"), name, refuse)


def _json(raw: bytes, name, entry: str) -> dict:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{name}: {entry} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{name}: {entry} is not a JSON object")
    return value


def _check_sample_inputs(raw: bytes, name) -> None:
    """torch loads sample inputs with weights_only=True and, where that fails, again with
    weights_only=False: they must load with the restricted unpickler, so the retry never runs."""
    try:
        value = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as err:
        raise ArtifactError(
            f"{name}: refusing entry 'data/sample_inputs/model.pt': it does not load as plain "
            f"tensors ({type(err).__name__}), and torch would retry it with weights_only=False; "
            f"a program file is code, load only programs you made or trust"
        ) from None
    if not isinstance(value, (tuple, dict)):
        raise ArtifactError(f"{name}: data/sample_inputs/model.pt holds a {type(value).__name__}")


def _check_graph(model: dict, name, refuse) -> None:
    if model.get("guards_code"):
        refuse("models/model.json: guards_code", "guard code is Python that .module() executes")
    module = model.get("graph_module")
    if not isinstance(module, dict) or not isinstance(module.get("graph"), dict):
        raise ArtifactError(f"{name}: models/model.json has no graph")
    for node in module["graph"].get("nodes", []):
        target = node.get("target") if isinstance(node, dict) else None
        ok = isinstance(target, str) and (
            _TARGET.fullmatch(target)
            or (target.startswith("_operator.") and target[len("_operator.") :] in _OPERATOR_TARGETS)
        )
        if not ok:
            refuse(
                f"models/model.json: node {node.get('name') if isinstance(node, dict) else node!r}",
                f"its target {target!r} is not an ATen or torch.ops operator",
            )

    def walk(value: Any):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("as_custom_obj", "as_custom_objs", "as_graph", "as_opaque_obj"):
                    refuse(f"models/model.json: {key}", "object constants and nested graphs are not loaded")
                if key == "expr_str":
                    _check_expr(item, name, refuse)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(model)


def _check_expr(expr: Any, name, refuse) -> None:
    if not isinstance(expr, str) or len(expr) > 500:
        refuse("models/model.json: expr_str", "a symbolic-shape expression must be a short string")
    pos = 0
    while pos < len(expr):
        match = _EXPR_TOKEN.match(expr, pos)
        if not match or match.end() == pos:
            refuse("models/model.json: expr_str", f"{expr[:80]!r} is not a shape expression (sympy would eval it)")
        ident = match.group(3)
        if ident and ident not in _EXPR_NAMES and not _SYMBOL.fullmatch(ident):
            refuse("models/model.json: expr_str", f"{expr[:80]!r} names {ident!r} (sympy would eval it)")
        pos = match.end()
        if not expr[pos:].strip():
            break


def _check_loaded_targets(program: ExportedProgram, path) -> None:
    """After loading, every call in the graph must be an operator, never a Python callable that
    a string target resolved to."""
    allowed = {getattr(operator, n) for n in _OPERATOR_TARGETS}
    for node in program.graph.nodes:
        if node.op == "call_function" and not (
            isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) or node.target in allowed
        ):
            raise ArtifactError(f"{path}: node {node.name} calls {node.target!r}, not an operator")
        if node.op in ("call_module", "call_method"):
            raise ArtifactError(f"{path}: node {node.name} is a {node.op}, which exported programs do not hold")
