"""Bad inputs through the command line: each one is refused with one readable line on stderr
that names the bad value and what was expected, exit status 2, no traceback, before any
training (no pretraining either), and with nothing written where the run would write."""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.factories import TINY, cifar_frame

SMALL = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TINY.items()]
CLASSES = ["airplane", "cat", "ship"]


def cli(command: str, args, cwd: Path, timeout: float = 300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)  # a search must never join someone else's cluster here
    return subprocess.run([sys.executable, "-m", f"distforget.{command}", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def models_in_cache() -> set[str]:
    folder = Path(os.environ["DISTFORGET_CACHE"]) / "models"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


# --- inputs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def frames():
    """A few CIFAR-10 images of three classes; airplanes in two subgroups, sky and ground."""
    train = cifar_frame("train", 16, classes=CLASSES).assign(split="train")
    test = cifar_frame("test", 20, classes=CLASSES).assign(split="test")
    df = pd.concat([train, test], ignore_index=True)[["image", "class_name", "split", "path"]]
    plane = df["class_name"] == "airplane"
    df["subgroup"] = None
    df.loc[plane, "subgroup"] = ["sky" if i % 2 else "ground" for i in range(int(plane.sum()))]
    return df


def write_manifest(folder: Path, df: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar.parquet"
    df.to_parquet(path, index=False)
    return path


def manifest_args(path: Path) -> list[str]:
    return [*SMALL, "data.format=parquet", f"data.path={path}", "scenario.forget_class=airplane",
            "scenario.forget_subgroup=sky", "scenario.subgroups=column"]


def no_sky_training_images(df):
    sky_train = (df["subgroup"] == "sky") & (df["split"] == "train")
    return df[~sky_train]


def same_image_in_two_subgroups(df):
    df = df.copy()
    sky = df.index[(df["subgroup"] == "sky") & (df["split"] == "train")][0]
    ground = df.index[(df["subgroup"] == "ground") & (df["split"] == "train")][0]
    df.at[ground, "image"] = df.at[sky, "image"]
    return df


def corrupt_row_7(df):
    df = df.drop(columns=["path"])  # without paths, images are named by row
    df.at[7, "image"] = b"this is not an image"
    return df


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory) -> Path:
    """A DF-ViT-Tiny-32 state dict as safetensors (random weights; only its keys matter)."""
    import open_clip
    from safetensors.torch import save_file

    import distforget  # noqa: F401  (registers the DF- architectures)

    model = open_clip.create_model("DF-ViT-Tiny-32", pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "vit-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _space(text: str):
    def make(tmp: Path) -> list[str]:
        path = tmp / "space.yaml"
        path.write_text(text)
        return [f"search.space={path}"]
    return make


# name -> (command, how to build the arguments from the test's folder, what the line must say)
CASES = {
    "missing config file": (
        "unlearn", lambda tmp, f: ["--config", tmp / "nope.yaml", *SMALL],
        ["config file", "nope.yaml", "does not exist or is not a file"]),
    "yaml syntax error": (
        "unlearn", lambda tmp, f: ["--config", _write(tmp / "bad.yaml",
                                                       "forget:\n  lr: 1e-3\n  epochs: [2\n"
                                                       "remind: {}\n")],
        ["bad.yaml", "is not valid YAML at line 4"]),
    "top level not a mapping": (
        "unlearn", lambda tmp, f: ["--config", _write(tmp / "list.yaml", "- forget.lr\n")],
        ["list.yaml", "expected a mapping at the top level, got list"]),
    "unknown key": (
        "unlearn", lambda tmp, f: [*SMALL, "forget.lrr=1e-3"],
        ["unknown key forget.lrr", "expected one of", "lr"]),
    "unknown section in the file": (
        "unlearn", lambda tmp, f: ["--config", _write(tmp / "c.yaml", "forgett: {lr: 0.1}\n")],
        ["unknown key forgett", "expected one of", "forget"]),
    "wrong type": (
        "unlearn", lambda tmp, f: [*SMALL, "forget.epochs=three"],
        ["forget.epochs: got 'three', expected an integer"]),
    "wrong type in a list": (
        "unlearn", lambda tmp, f: [*SMALL, "restore.grid=[0.5,high]"],
        ["restore.grid[1]: got 'high', expected a number"]),
    "out of range": (
        "unlearn", lambda tmp, f: [*SMALL, "forget.lr=2"],
        ["forget.lr: got 2.0, expected a value > 0 and <= 1"]),
    "not one of the choices": (
        "unlearn", lambda tmp, f: [*SMALL, "forget.loss=hinge"],
        ["forget.loss: got 'hinge', expected one of 'similarity', 'margin', 'ce_away'"]),
    "unknown method": (
        "unlearn", lambda tmp, f: ["--method", "forget_everything", *SMALL],
        ["--method 'forget_everything'", "expected one of", "three_stage"]),
    "search space empty range": (
        "search", lambda tmp, f: [*SMALL, *_space(
            "params:\n  forget.lr: {type: float, low: 1.0e-3, high: 1.0e-3, log: true}\n")(tmp)],
        ["params.forget.lr", "empty or inverted range low=0.001 high=0.001",
         "expected low < high"]),
    "search space inverted range": (
        "search", lambda tmp, f: [*SMALL, *_space(
            "params:\n  forget.top_k: {type: int, low: 4, high: 1}\n")(tmp)],
        ["params.forget.top_k", "empty or inverted range low=4 high=1", "expected low < high"]),
    "search space range outside the config's bounds": (
        "search", lambda tmp, f: [*SMALL, *_space(
            "params:\n  forget.lr: {type: float, low: 1.0e-3, high: 3.0}\n")(tmp)],
        ["params.forget.lr = 3.0", "forget.lr: got 3.0, expected a value > 0 and <= 1"]),
    "search space unknown key": (
        "search", lambda tmp, f: [*SMALL, *_space(
            "params:\n  forget.lrr: {type: float, low: 1.0e-4, high: 1.0e-3}\n")(tmp)],
        ["params.forget.lrr", "unknown key forget.lrr"]),
    "search space missing file": (
        "search", lambda tmp, f: [*SMALL, f"search.space={tmp / 'nospace.yaml'}"],
        ["search.space", "nospace.yaml", "no such file"]),
    "forget class not in the data": (
        "unlearn", lambda tmp, f: [*SMALL, "scenario.forget_class=circel"],
        ["scenario.forget_class 'circel' is not a class of the data",
         "did you mean 'circle'?"]),
    "forget subgroup not in the data": (
        "unlearn", lambda tmp, f: [*SMALL, "scenario.forget_subgroup=purple"],
        ["scenario.forget_subgroup 'purple' is not a subgroup of class 'circle'",
         "subgroups (column): blue, green, red"]),
    "forget class not in the manifest": (
        "unlearn", lambda tmp, f: [*manifest_args(write_manifest(tmp / "m", f)),
                                   "scenario.forget_class=aeroplane"],
        ["scenario.forget_class 'aeroplane' is not a class of the data",
         "did you mean 'airplane'?"]),
    "forget subgroup not in the manifest": (
        "unlearn", lambda tmp, f: [*manifest_args(write_manifest(tmp / "m", f)),
                                   "scenario.forget_subgroup=water"],
        ["scenario.forget_subgroup 'water' is not a subgroup of class 'airplane'",
         "ground, sky"]),
    "empty forget set": (
        "unlearn", lambda tmp, f: manifest_args(write_manifest(tmp / "m",
                                                                no_sky_training_images(f))),
        ["the forget set is empty or too small: 0 training images",
         "subgroup 'sky' of class 'airplane'", "at least 2 are needed"]),
    "forget and retain sets overlap": (
        "unlearn", lambda tmp, f: [*manifest_args(write_manifest(
            tmp / "m", same_image_in_two_subgroups(f))), "scenario.shared_images=error"],
        ["the forget and retain sets overlap: 1 images appear in both (same content)",
         "cifar.parquet:train/airplane/"]),
    "corrupt image": (
        "unlearn", lambda tmp, f: manifest_args(write_manifest(tmp / "m", corrupt_row_7(f))),
        ["image cifar.parquet#row7 cannot be decoded"]),
    "manifest missing a column": (
        "unlearn", lambda tmp, f: manifest_args(write_manifest(
            tmp / "m", f.drop(columns=["class_name"]))),
        ["cifar.parquet", "has no column 'class_name'", "columns: image, split, path, subgroup"]),
    "manifest path missing": (
        "unlearn", lambda tmp, f: manifest_args(tmp / "nowhere" / "cifar.parquet"),
        ["data.path", "nowhere", "no Parquet manifest there"]),
    "unknown model name": (
        "unlearn", lambda tmp, f: [*SMALL, "model.name=DF-RN-Tiny-33"],
        ["model.name 'DF-RN-Tiny-33' is not an open_clip architecture",
         "did you mean 'DF-RN-Tiny-32'"]),
    "checkpoint keys do not match the architecture": (
        "unlearn", lambda tmp, f: [*SMALL, "model.name=DF-RN-Tiny-32",
                                   f"model.pretrained={tmp / 'vit.safetensors'}"],
        ["vit.safetensors", "does not match the architecture", "missing (e.g.",
         "unexpected (e.g."]),
    "checkpoint file missing": (
        "unlearn", lambda tmp, f: [*SMALL, f"model.pretrained={tmp / 'gone.safetensors'}"],
        ["model.pretrained", "gone.safetensors", "no such file"]),
}


# These run as real subprocesses (a fresh interpreter, exactly as a user runs them); the other
# cases call the same ``main`` in this process, which is quicker and takes the same path.
SUBPROCESS = {"missing config file", "unknown key", "empty forget set"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def in_process(command: str, args, cwd: Path, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = importlib.import_module(f"distforget.{command}").main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(command, code, out, err)


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, frames,
                                                           vit_checkpoint, capsys, monkeypatch):
    command, make_args, expected = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    if "checkpoint keys" in case:
        (inputs / "vit.safetensors").write_bytes(vit_checkpoint.read_bytes())
    args = make_args(inputs, frames)
    work = tmp_path / "work"
    work.mkdir()
    before_inputs, before_models = tree(inputs), models_in_cache()

    if case in SUBPROCESS:
        proc = cli(command, args, cwd=work)
    else:
        proc = in_process(command, args, work, capsys, monkeypatch)

    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"python -m distforget.{command}: error: ")
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    # Nothing written where the run writes (no unlearn.json, no checkpoints, no run folder),
    # the inputs untouched, and no model trained (pretraining caches its model).
    assert list(work.iterdir()) == []
    assert tree(inputs) == before_inputs
    assert models_in_cache() == before_models
    assert "pretraining" not in proc.stdout


def test_unreadable_config_file(tmp_path):
    config = _write(tmp_path / "secret.yaml", "forget: {lr: 1.0e-3}\n")
    config.chmod(0)
    try:
        if os.access(config, os.R_OK):
            pytest.skip("running as a user who reads any file (root)")
        proc = cli("unlearn", ["--config", config, *SMALL], cwd=tmp_path)
    finally:
        config.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert "secret.yaml" in line and "cannot be read: Permission denied" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.yaml"]


def test_a_folder_holding_another_search_is_refused_and_left_as_it_was(tmp_path, capsys,
                                                                      monkeypatch):
    from distforget.config import load_config
    from distforget.run_folder import RunFolder, identity_view, search_identity
    from distforget.search_space import resolve_space_path

    # What a search with forget.margin=0.3 leaves behind (run.json and a result file).
    storage = tmp_path / "runs"
    run = storage / "embedded-default"
    run.mkdir(parents=True)
    other = load_config(None, [*SMALL, "forget.margin=0.3", f"output.storage={storage}"])
    space_text = resolve_space_path("embedded").read_text()
    (run / "run.json").write_text(json.dumps({
        "identity": search_identity(other, space_text), "identity_view": identity_view(other),
        "space_text": space_text, "config": other.to_dict()}, indent=2))
    (run / "results.parquet").write_bytes(b"PAR1 not read by the refusal PAR1")
    before = tree(storage)

    proc = in_process("search", [*SMALL, f"output.storage={storage}"], tmp_path, capsys,
                      monkeypatch)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert f"output folder {str(run)!r} holds a different search's results" in line
    assert "(differs in: forget.margin)" in line and "use another output.name" in line
    assert tree(storage) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]

    # The same config as the folder's search is accepted up to the point of running it: the
    # refusal above was about the identity, not about the folder existing.
    assert RunFolder(str(run)).check_resumable(
        other, search_identity(other, space_text), space_text)["identity"] == \
        search_identity(other, space_text)


def test_a_non_empty_folder_without_a_search_is_refused(tmp_path, capsys, monkeypatch):
    run = tmp_path / "runs" / "embedded-default"
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    proc = in_process("search", [*SMALL, f"output.storage={tmp_path / 'runs'}"], tmp_path,
                      capsys, monkeypatch)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert "is not empty and holds no distforget search" in line and str(run) in line
    assert tree(tmp_path / "runs") == {"embedded-default/notes.txt":
                                       hashlib.sha256(b"mine").hexdigest()}


def test_debug_raises_the_data_error_itself(tmp_path, monkeypatch):
    from distforget.errors import DataError
    from distforget.unlearn import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="scenario.forget_class 'circel' is not a class of the"):
        main(["--debug", *SMALL, "scenario.forget_class=circel"])
    assert list(tmp_path.iterdir()) == []


def test_the_valid_manifest_these_cases_break_is_accepted(tmp_path, frames):
    """The control: the unbroken manifest runs (so each case above fails for its own defect)."""
    manifest = write_manifest(tmp_path / "m", frames)
    work = tmp_path / "work"
    work.mkdir()
    proc = cli("unlearn", ["--method", "base", "--out", "", "--json", "unlearn.json",
                           *manifest_args(manifest)], cwd=work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    record, = json.loads((work / "unlearn.json").read_text())
    assert record["method"] == "base" and 0 <= record["forget_acc"] <= 1
