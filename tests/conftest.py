"""Shared fixtures: a tiny synthetic set made by the user's path (synthetic.py → reencode.sh →
datasets.py) and a tiny evaluated run of train.py on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import datasets as ds
from synthetic import SyntheticConfig, generate
from tests.trees import (
    CK_SUBJECTS,
    clip,
    dfew_tree,
    emotion,
    ferv39k_tree,
    garbage,
    mafw_tree,
    mmi_session,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--dataset",
    "synthetic",
    "--backbone",
    "resnet6",
    "--hidden",
    "8",
    "--size",
    "32",
    "--num-segments",
    "2",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--mi-hidden",
    "16",
    "--pretrain-epochs",
    "1",
    "--fold",
    "0",
    "--device",
    "cpu",
]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """2 shared cores: torch's second thread mostly waits; one thread is faster and steadier."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _own_weight_cache(tmp_path_factory):
    """The converted FaceNet (identity_weights.py) goes to a cache of the test session, not the
    user's (train.py runs in subprocesses inherit it)."""
    os.environ["MIC_CACHE_DIR"] = str(tmp_path_factory.mktemp("mic-cache"))
    os.environ["OMP_NUM_THREADS"] = "1"  # subprocesses too: threads spin on 2 shared cores


def train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    """The command line of a tiny train.py run."""
    return [
        sys.executable,
        str(ROOT / "train.py"),
        *TINY,
        "--root",
        str(data),
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """A tiny synthetic set, re-encoded and indexed."""
    base = tmp_path_factory.mktemp("syn")
    cfg = SyntheticConfig(
        subjects=6,
        id_subjects=3,
        id_images=4,
        size=48,
        min_frames=6,
        max_frames=8,
        min_expressions=2,
        max_expressions=3,
        unlabelled=1,
    )
    generate(base / "tiny-raw", cfg)
    subprocess.run(
        ["bash", str(ROOT / "reencode.sh"), str(base / "tiny-raw"), str(base / "tiny")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "datasets.py"),
            "--dataset",
            "synthetic",
            "--root",
            str(base / "tiny"),
        ],
        check=True,
        capture_output=True,
    )
    return base / "tiny"


@pytest.fixture(scope="session")
def tiny_run(data, tmp_path_factory) -> Path:
    """MIC and MIC−MI, 1 epoch on folds 0 and 1, evaluated (results.json, results.md)."""
    import evaluate

    run = tmp_path_factory.mktemp("run") / "run"
    for flags in ([], ["--no-mi"]):
        subprocess.run(
            train_cmd(data, run, "--epochs", "1", "--fold", "1", *flags),
            check=True,
            capture_output=True,
        )
    evaluate.main([str(run), "--speed-clips", "1"])
    return run


@pytest.fixture(scope="module")
def ckplus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Re-encoded CK+ tree: 11 labelled subjects plus every quirk."""
    root = tmp_path_factory.mktemp("ckplus")
    images = root / "cohn-kanade-images"
    for i, s in enumerate(CK_SUBJECTS):
        clip(images / s / "001.mp4", seed=i)
        emotion(root, s, "001", i % 7 + 1)
    clip(images / "S005" / "002.mp4", seed=20)  # unlabelled: no Emotion folder
    clip(images / "S010" / "003.mp4", seed=21)  # unlabelled: empty Emotion folder
    (root / "Emotion" / "S010" / "003").mkdir(parents=True)
    garbage(images / "S011" / "002.mp4")  # unreadable, labelled
    emotion(root, "S011", "002", 3)
    clip(images / "S014" / "002.mp4", seed=22)  # neutral (code 0): not a class
    emotion(root, "S014", "002", 0)
    emotion(root, "S099", "001", 5)  # label without clip
    for d in (images, root / "Emotion", root / "Emotion" / "S005"):
        (d / ".DS_Store").write_bytes(b"\0\1junk")
    assert ds.main(["--dataset", "ckplus", "--root", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def mmi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mmi")
    mmi_session(root, 1, "S001-001", 0, 1, "1")
    mmi_session(root, 2, "S001-002", 2, 4, "1")  # dual view
    mmi_session(root, 3, "S002-003", 0, 6, "2")
    mmi_session(root, 4, "S002-004", 1, 2, "2")  # profile only: unsupported
    mmi_session(root, 5, "S003-005", 0, None, "3")  # no Emotion metatag
    mmi_session(root, 6, "S003-006", 0, 3, None)  # subject from the name
    mmi_session(root, 8, "S004-008", 0, 5, "4")
    clip(root / "Sessions" / "8" / "S004-008.mp4", frames=12, gop=5, seed=8)  # 3 GOPs
    (root / "Sessions" / "7").mkdir()  # an image session: no video, ignored
    Image.new("RGB", (8, 8)).save(root / "Sessions" / "7" / "S004-007.jpg")
    (root / "Sessions" / ".DS_Store").write_bytes(b"x")
    return root


@pytest.fixture(scope="module")
def afew(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Re-encoded AFEW tree of square (face-crop-like) 48x48 clips."""
    root = tmp_path_factory.mktemp("afew")
    layout = [
        ("Train_AFEW", "Angry", 1),
        ("Train_AFEW", "Happy", 2),
        ("Train_AFEW", "Happy", 3),
        ("Val_AFEW", "Sad", 4),
        ("Val_AFEW", "Neutral", 5),
        ("Train_AFEW", "Bored", 6),  # not an AFEW class
    ]
    for split, cls, k in layout:
        clip(root / split / cls / f"{k:09d}.mp4", width=48, height=48, seed=k)
    (root / "Train_AFEW" / ".DS_Store").write_bytes(b"x")
    assert ds.main(["--dataset", "afew", "--root", str(root)]) == 0
    return root


def _indexed(factory: pytest.TempPathFactory, name: str, tree) -> Path:
    """A re-encoded fixture tree of dataset ``name`` made by ``tree``, indexed by datasets.py."""
    root = tree(factory.mktemp(name))
    assert ds.main(["--dataset", name, "--root", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def dfew(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Re-encoded DFEW tree with every split-file quirk (tests.trees.DFEW_SPEC), indexed."""
    return _indexed(tmp_path_factory, "dfew", dfew_tree)


@pytest.fixture(scope="module")
def ferv39k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Re-encoded FERV39k tree with every split-file quirk (tests.trees.FERV39K_SPEC), indexed."""
    return _indexed(tmp_path_factory, "ferv39k", ferv39k_tree)


@pytest.fixture(scope="module")
def mafw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Re-encoded MAFW tree with every split-file quirk (tests.trees.MAFW_SPEC), indexed."""
    return _indexed(tmp_path_factory, "mafw", mafw_tree)
