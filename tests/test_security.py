"""A quantize folder is data until checked: crafted `.pt2` archives that run code under plain
`torch.export.load` are refused with no side effect, altered files fail their hash, and a
genuine archive still loads."""

from __future__ import annotations

import builtins
import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import TINY_LIGHT
from uniformer_edge._cli import run
from uniformer_edge._io import sha256_file
from uniformer_edge.quantize import ArtifactError, QuantizeJob, load_program, load_quantized, run_job

LIGHT = {k: v for k, v in TINY_LIGHT.items() if k != "num_classes"}


class _Payload:
    """Unpickling it creates the file `marker`: the side effect that proves code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def _code(marker: Path) -> str:
    """Python that creates `marker`, with no quote characters that would break the host string."""
    return f"exec(bytes.fromhex('{f'open({str(marker)!r}, chr(119)).close()'.encode().hex()}').decode())"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("security") / "q"
    run_job(
        QuantizeJob(variant="xxs", model_overrides=LIGHT, frames=4, size=32, num_calib=2, num_eval=2, out=str(out)),
        progress=False,
    )
    return out


def _rewrite(data: bytes, change) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    root = source.namelist()[0].split("/")[0] + "/"
    files = {name[len(root) :]: source.read(name) for name in source.namelist()}
    change(files)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            archive.writestr(root + name, content)
    return out.getvalue()


def _torch_save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _edit_config(entry: str, edit):
    def change(files):
        config = json.loads(files[entry])
        edit(config["config"], files)
        files[entry] = json.dumps(config).encode()

    return change


def _edit_model(edit):
    def change(files):
        files["models/model.json"] = edit(files["models/model.json"].decode()).encode()

    return change


def _crafted(kind: str, marker: Path):
    """(change to the archive, whether torch.export.load alone runs it or .module() must be called)."""
    payload = _Payload(marker)
    if kind == "pickled weight":

        def edit(config, files):
            fqn = next(iter(config))
            config[fqn]["use_pickle"] = True
            files["data/weights/" + config[fqn]["path_name"]] = _torch_save(payload)

        return _edit_config("data/weights/model_weights_config.json", edit)
    if kind in ("pickled constant", "opaque constant"):
        path_name = "tensor_0" if kind == "pickled constant" else "opaque_obj_0"

        def edit(config, files):
            config["planted"] = {"path_name": path_name, "is_param": False, "use_pickle": True, "tensor_meta": None}
            files["data/constants/" + path_name] = (
                _torch_save(payload) if kind == "pickled constant" else pickle.dumps(payload)
            )

        return _edit_config("data/constants/model_constants_config.json", edit)
    if kind == "legacy weights":
        return lambda files: files.__setitem__("data/weights/model.pt", _torch_save(payload))
    if kind == "legacy constants":
        return lambda files: files.__setitem__("data/constants/model.pt", _torch_save(payload))
    if kind == "sample inputs":
        return lambda files: files.__setitem__("data/sample_inputs/model.pt", _torch_save((payload,)))
    if kind == "guard code":

        def edit(text):
            model = json.loads(text)
            model["guards_code"] = [f"{_code(marker)} is None"]
            return json.dumps(model)

        return _edit_model(edit)
    if kind == "shape expression":  # sympy.sympify evaluates it

        def edit(text):
            model = json.loads(text)
            for name in model["range_constraints"]:
                code = f"exec(\"open({str(marker)!r}, 'w').close()\")"  # names only builtins sympy leaves alone
                return text.replace(f"Symbol('{name}', positive=True, integer=True)", json.dumps(code)[1:-1])
            raise AssertionError("the genuine program has no symbolic shape")

        return _edit_model(edit)
    raise ValueError(kind)


PAYLOAD_KINDS = [
    "pickled weight",
    "pickled constant",
    "opaque constant",
    "legacy weights",
    "legacy constants",
    "sample inputs",
    "guard code",
    "shape expression",
]


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_crafted_archives_run_code_under_torch_but_are_refused(kind, quantized, tmp_path):
    import torchao.quantization.pt2e  # noqa: F401

    marker = tmp_path / "payload-ran"
    crafted = tmp_path / "quantized.pt2"
    crafted.write_bytes(_rewrite((quantized / "quantized.pt2").read_bytes(), _crafted(kind, marker)))
    try:  # the threat is real: plain torch runs the payload (loading, or calling the module)
        torch.export.load(str(crafted)).module()(torch.randn(1, 3, 4, 32, 32))
    except Exception:
        pass
    assert marker.exists(), f"the {kind} payload did not run under torch.export.load"
    marker.unlink()
    with pytest.raises(ArtifactError, match="refusing entry") as err:
        load_program(crafted)
    assert str(crafted) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "kind,change",
    [
        ("object constant", lambda f: f.__setitem__("data/constants/custom_obj_0", b"\x80\x04N.")),
        ("compiled library", lambda f: f.__setitem__("data/aotinductor/model/model.so", b"\x7fELF")),
        ("extension operator", _edit_model(lambda t: t.replace('"torch.ops.aten.sym_size.int"', '"#evil"', 1))),
        ("python callable", _edit_model(lambda t: t.replace('"torch.ops.aten.sym_size.int"', '"torch.os.system"', 1))),
        ("nested graph", _edit_model(lambda t: t.replace('"as_tensor"', '"as_graph"', 1))),
    ],
)
def test_other_code_carrying_entries_are_refused(kind, change, quantized, tmp_path):
    crafted = tmp_path / "quantized.pt2"
    crafted.write_bytes(_rewrite((quantized / "quantized.pt2").read_bytes(), change))
    with pytest.raises(ArtifactError, match="refusing entry"):
        load_program(crafted)


def test_genuine_program_loads_and_checks_its_hash(quantized, tmp_path):
    cfg, program = load_quantized(quantized)
    assert cfg["program_sha256"] == sha256_file(quantized / "quantized.pt2")
    assert program.module()(torch.randn(1, 3, 4, 32, 32)).shape == (1, 12)
    # a rewritten (re-zipped) genuine archive still loads: the checks are on content, not bytes
    rezipped = tmp_path / "quantized.pt2"
    rezipped.write_bytes(_rewrite((quantized / "quantized.pt2").read_bytes(), lambda files: None))
    load_program(rezipped)


def _copy(quantized: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(quantized, folder)
    return folder


def test_altered_program_fails_its_hash(quantized, tmp_path):
    folder = _copy(quantized, tmp_path)
    program = folder / "quantized.pt2"
    data = bytearray(program.read_bytes())
    at = data.find(b"weight_3") + 200  # inside a tensor payload, past its header
    data[at] ^= 0x01
    program.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the SHA-256 recorded beside it"):
        load_quantized(folder)


@pytest.mark.parametrize(
    "damage,message",
    [
        (
            lambda f: (f / "quantized.pt2").write_bytes((f / "quantized.pt2").read_bytes()[:5000]),
            "not a program archive",
        ),
        (lambda f: (f / "quant_config.json").write_text("{not json"), "is not valid JSON"),
        (lambda f: (f / "quant_config.json").write_text(json.dumps({"variant": "xxs"})), "lacks method, quant_config"),
        (lambda f: (f / "quantized.pt2").unlink(), "has no quantized.pt2"),
    ],
)
def test_damaged_quantize_folders_give_one_line_errors(damage, message, quantized, tmp_path, capsys):
    from uniformer_edge.benchmark.__main__ import main as benchmark_main
    from uniformer_edge.export.__main__ import main as export_main

    folder = _copy(quantized, tmp_path)
    damage(folder)
    if "not a program" in message:  # the hash would catch it first: the archive check must stand alone
        config = json.loads((folder / "quant_config.json").read_text())
        config["program_sha256"] = sha256_file(folder / "quantized.pt2")
        (folder / "quant_config.json").write_text(json.dumps(config))
    assert run(export_main, ["--quantized", str(folder), "--out", str(tmp_path / "x")]) == 2
    assert run(benchmark_main, [str(folder), "--out", str(tmp_path / "b")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 2 and all(message in line for line in err), err
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()


def test_cli_refuses_a_planted_payload_with_a_matching_hash(quantized, tmp_path, capsys):
    """Whoever hands over the folder can rewrite the hash too: the archive check is the defence."""
    from uniformer_edge.benchmark.__main__ import main as benchmark_main
    from uniformer_edge.export.__main__ import main as export_main

    folder = _copy(quantized, tmp_path)
    marker = tmp_path / "payload-ran"
    program = folder / "quantized.pt2"
    program.write_bytes(_rewrite(program.read_bytes(), _crafted("pickled weight", marker)))
    config = json.loads((folder / "quant_config.json").read_text())
    config["program_sha256"] = sha256_file(program)
    (folder / "quant_config.json").write_text(json.dumps(config))
    assert run(export_main, ["--quantized", str(folder), "--out", str(tmp_path / "x")]) == 2
    assert run(benchmark_main, [str(folder), "--out", str(tmp_path / "b")]) == 2
    assert "refusing entry" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "x").exists()
