"""Shared fixtures: a tiny synthetic set made by the user's path (synthetic.py → reencode.sh →
datasets.py) and a tiny evaluated run of train.py on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthetic import SyntheticConfig, generate

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--backbone", "resnet6", "--hidden", "8", "--size", "32",
        "--num-segments", "2", "--batch-size", "4", "--workers", "0", "--mi-hidden", "16",
        "--pretrain-epochs", "1", "--fold", "0", "--device", "cpu"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """2 shared cores: torch's second thread mostly waits; one thread is faster and steadier."""
    torch.set_num_threads(1)


def train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    """The command line of a tiny train.py run."""
    return [sys.executable, str(ROOT / "train.py"), *TINY, "--root", str(data), "--out", str(out),
            *extra]


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """A tiny synthetic set, re-encoded and indexed."""
    base = tmp_path_factory.mktemp("syn")
    cfg = SyntheticConfig(subjects=6, id_subjects=3, id_images=4, size=48, min_frames=6,
                          max_frames=8, min_expressions=2, max_expressions=3, unlabelled=1)
    generate(base / "tiny-raw", cfg)
    subprocess.run(["bash", str(ROOT / "reencode.sh"), str(base / "tiny-raw"), str(base / "tiny")],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "datasets.py"), "--dataset", "synthetic",
                    "--root", str(base / "tiny")], check=True, capture_output=True)
    return base / "tiny"


@pytest.fixture(scope="session")
def tiny_run(data, tmp_path_factory) -> Path:
    """MIC and MIC−MI, 1 epoch on folds 0 and 1, evaluated (results.json, results.md)."""
    import evaluate

    run = tmp_path_factory.mktemp("run") / "run"
    for flags in ([], ["--no-mi"]):
        subprocess.run(train_cmd(data, run, "--epochs", "1", "--fold", "1", *flags),
                       check=True, capture_output=True)
    evaluate.main([str(run), "--speed-clips", "1"])
    return run
