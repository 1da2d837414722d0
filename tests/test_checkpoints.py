"""Broken checkpoints are refused in one line naming the file and the first bad key, before any job where possible
(``validate --deep``), and never with a message that suggests loading a file unsafely."""
import json
import re
import struct
from pathlib import Path

import pytest
import timm
import torch
import yaml

from pipeline.cli import main as cli
from pipeline.models.backbone import create_model, load_state, save_state

MODEL = "test_efficientnet"


def good_state() -> dict[str, torch.Tensor]:
    return create_model(MODEL, 10, None).state_dict()


def with_weights(workdir: Path, weights: Path) -> None:
    cfg = yaml.safe_load((workdir / "params.yaml").read_text())
    cfg["models"]["tiny"]["weights"] = str(weights)
    (workdir / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def one_line_error(capsys, *argv: str, code: int) -> str:
    """Run the command line in-process; it must fail with ``code`` and one ``error:`` line, no traceback."""
    assert cli(list(argv)) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights_only=False" not in err and "weights_only` set to `False" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last.removeprefix("error: ")


def _nan(path: Path) -> str:
    state = good_state()
    bad = state["blocks.1.0.conv_exp.weight"]
    bad.view(-1)[5] = float("nan")
    save_state(state, path)
    return f"{path}: blocks.1.0.conv_exp.weight: 1 of {bad.numel()} values are NaN or infinite; a broken checkpoint " \
           "is not used (every feature computed from it would be NaN)"


def _truncated(path: Path) -> str:
    save_state(good_state(), path)
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])
    return f"{path}: not a readable safetensors file (Error while deserializing header: incomplete metadata, file " \
           "not fully covered): truncated, tampered with, or not safetensors"


def _wrong_shape_header(path: Path) -> str:
    """A header whose shape no longer matches its bytes (tampered)."""
    save_state(good_state(), path)
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    header["conv_stem.weight"]["shape"] = [48, 3, 3, 3]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + n:])
    return f"{path}: not a readable safetensors file (Error while deserializing header: invalid shape, data type, " \
           "or offset for tensor): truncated, tampered with, or not safetensors"


def _text(path: Path) -> str:
    path.write_text("# not a checkpoint\nhello\n")
    return f"{path}: not a checkpoint of tensors ("   # (the error torch raised), then what is expected


def _pickled(path: Path) -> str:
    torch.save({"state_dict": good_state(), "args": Path("x")}, path)   # tensors next to a pickled object
    return f"{path}: holds pickled objects (pathlib.PosixPath), which are never loaded: a checkpoint must hold " \
           "tensors only (a state dict, or .safetensors)"


def _other_architecture(path: Path) -> str:
    save_state(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return f"{path} does not fit {MODEL}: "   # names the first missing and the first foreign key (below)


def _wrong_sizes(path: Path) -> str:
    state = good_state()
    state["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    save_state(state, path)
    return f"{path} does not fit {MODEL}: conv_stem.weight has shape (16, 3, 3, 3) in the file, (24, 3, 3, 3) in " \
           "the model (a checkpoint of another size?)"


CASES = {"nan.safetensors": _nan, "truncated.safetensors": _truncated, "header.safetensors": _wrong_shape_header,
         "notes.pth": _text, "pickled.pth": _pickled, "resnet.safetensors": _other_architecture,
         "sizes.safetensors": _wrong_sizes}


@pytest.mark.parametrize("name", list(CASES))
def test_a_broken_checkpoint_is_refused_before_any_job_and_by_the_backbone_job(tiny_workdir, capsys, name):
    path = tiny_workdir / name
    expected = CASES[name](path)
    with_weights(tiny_workdir, path)
    before = one_line_error(capsys, "validate", "params.yaml", "--deep", code=2)
    assert before.startswith(f"params.yaml: models.tiny.weights: {expected}"), before
    job = one_line_error(capsys, "backbone", "--model", "tiny", code=1)
    assert job.startswith(expected), job
    assert not (tiny_workdir / "data/weights/tiny.safetensors").exists()


def test_the_first_bad_keys_of_another_architecture_are_named(tmp_path):
    from pipeline.models.state_files import CheckpointError
    from pipeline.models.weights import resolve_weights

    path = tmp_path / "resnet.safetensors"
    _other_architecture(path)
    n_model = len(good_state())
    with pytest.raises(CheckpointError) as err:
        resolve_weights(MODEL, str(path))
    assert re.fullmatch(rf"{path} does not fit {MODEL}: \d+ of the model's {n_model} tensors are missing \(first: "
                        r"conv_stem.weight\); \d+ of the file's are not the model's \(first: conv1.weight\): a "
                        r"checkpoint of another architecture\?", str(err.value)), str(err.value)


def test_a_tampered_output_stops_the_next_stage_in_one_line(tiny_workdir, capsys):
    """The backbone's output changed after it was written (resized, truncated): the stages reading it refuse it."""
    assert cli(["backbone", "--model", "tiny"]) == 0
    assert cli(["prepare_data", "--dataset", "digits"]) == 0
    weights = tiny_workdir / "data/weights/tiny.safetensors"
    good = weights.read_bytes()
    state = load_state(weights)
    state["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    save_state(state, weights)
    capsys.readouterr()
    assert one_line_error(capsys, "features", "--dataset", "digits", "--model", "tiny", code=1) == (
        f"data/weights/tiny.safetensors: does not load into {MODEL}: conv_stem.weight has shape [16, 3, 3, 3] in "
        "the file, [24, 3, 3, 3] in the model")
    weights.write_bytes(good[:-100])
    assert one_line_error(capsys, "features", "--dataset", "digits", "--model", "tiny", code=1) == (
        f"data/weights/tiny.safetensors: does not load into {MODEL}: Error while deserializing header: incomplete "
        "metadata, file not fully covered")


def test_a_fine_tuned_checkpoint_of_nans_is_refused_where_it_is_read(tmp_path):
    from pipeline.models.state_files import CheckpointError

    path = tmp_path / "model.safetensors"
    _nan(path)
    with pytest.raises(CheckpointError, match=r"model.safetensors: blocks.1.0.conv_exp.weight: 1 of \d+ values are "
                                              r"NaN or infinite"):
        load_state(path)
