"""train.py and evaluate.py on a tiny synthetic set made by the user's path (synthetic.py →
reencode.sh → datasets.py): every variant learns, a killed run resumes to the same state,
torchrun with 2 gloo processes trains, evaluate.py writes its results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import evaluate
import train
from datasets import PROTOCOLS
from reader import collate
from tests.conftest import ROOT, TINY, train_cmd

VARIANTS = {
    "mic": [],
    "mic-mi": ["--no-mi"],
    "mic-mi+adv": ["--no-mi", "--adv"],
    "mic-rec": ["--no-rec"],
    "mic+mv": ["--with-mv"],
    "rgb": ["--input", "rgb"],
    "mic-club": ["--estimator", "club", "--t-steps", "2"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_lowers_its_loss(data, variant):
    args = train.parse_args([*TINY, "--root", str(data), "--lr", "3e-3", *VARIANTS[variant]])
    if variant != "mic-club":
        assert args.name == f"{variant}+resnet6"
    _, _, test_ds = train.make_datasets(args, PROTOCOLS["synthetic"][0])
    ds = train.make_datasets(args, PROTOCOLS["synthetic"][1])[0]
    torch.manual_seed(0)
    batch = collate([ds[i] for i in range(4)])  # one draw of training clips: a fixed batch
    assert batch["input"].shape == (4, 2, 3, 32, 32)
    model, estimator, opt, opt_t = train.build(args, ds, 24, torch.device("cpu"))
    torch.manual_seed(0)
    z_i = torch.randn(4, 24)
    step = train.TrainForward(model)
    terms = [train.train_step(step, estimator, opt, opt_t, batch, z_i, args, torch.device("cpu"))
             for _ in range(12)]
    assert all(torch.isfinite(torch.tensor(t["loss"])) for t in terms)
    # The encoder's own terms fall (the MI estimate rises as T_θ learns: it is a game).
    for key in ("ce", "rec"):
        if key in terms[0]:
            assert terms[-1][key] < terms[0][key], (key, [t[key] for t in terms])
    assert ("rec" in terms[0]) == (variant != "mic-rec")
    assert ("adv" in terms[0]) == (variant == "mic-mi+adv")


def test_lr_schedule():
    assert train.lr_at(0, 1e-3, "30:1e-4") == 1e-3
    assert train.lr_at(30, 1e-3, "30:1e-4") == 1e-4
    assert train.lr_at(65, 1e-4, "60:1e-7,30:8e-6") == 1e-7


def _state(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "mic+resnet6" / "fold0" / "ckpt.pt", weights_only=True)
    return {**ckpt["model"], **{f"T.{k}": v for k, v in ckpt["estimator"].items()}}


def test_killed_run_resumes_to_the_same_state(data, tmp_path):
    whole = tmp_path / "whole"
    subprocess.run(train_cmd(data, whole, "--epochs", "3"), check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data, killed, "--epochs", "3"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = killed / "mic+resnet6" / "fold0" / "ckpt.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = torch.load(ckpt, weights_only=True)["epoch"]
    assert epoch < 2, "the run finished before it could be killed"
    # Without --resume the run refuses to overwrite; with it, it continues where it stopped.
    refused = subprocess.run(train_cmd(data, killed, "--epochs", "3"), capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    resumed = subprocess.run(train_cmd(data, killed, "--epochs", "3", "--resume"),
                             capture_output=True, text=True, check=True)
    assert f"resuming at epoch {epoch + 1}" in resumed.stdout + resumed.stderr
    a, b = _state(whole), _state(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_torchrun_two_gloo_processes(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29533", str(ROOT / "train.py"), *TINY, "--root", str(data),
         "--out", str(tmp_path / "ddp"), "--epochs", "1", "--max-steps", "2", "--no-mi",
         "--adv"],
        capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "mic-mi+adv+resnet6" / "fold0" /
                         "result.json").read_text())
    assert 0.0 <= result["accuracy"] <= 1.0 and result["history"][0]["epoch"] == 0


def test_evaluate_writes_results(tiny_run):
    run = tiny_run
    res = json.loads((run / "results.json").read_text())
    names = [v["variant"] for v in res["variants"]]
    assert names == ["mic+resnet6", "mic-mi+resnet6"]
    for v in res["variants"]:
        assert v["folds"] == ["fold0", "fold1"] and len(v["accuracy_per_fold"]) == 2
        assert 0 <= v["identity_probe"] <= 1
        assert (run / v["variant"] / "confusion.png").stat().st_size > 1000
    paths = {r["path"] for r in res["speed"]}
    assert {"residual + resnet6+LSTM", "rgb + resnet50+LSTM"} <= paths
    md = (run / "results.md").read_text()
    assert "MIC − MI, ResNet6" in md and "clips/s" in md


def test_missing_dataset_says_what_to_do(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "train.py"), "--dataset", "afew",
                          "--root", str(tmp_path / "afew")], capture_output=True, text=True)
    assert run.returncode != 0
    assert "Train_AFEW" in run.stderr and "reencode.sh" in run.stderr


def test_identity_probe_finds_identity():
    g = torch.Generator().manual_seed(0)
    subjects = torch.arange(10).repeat_interleave(6)
    z = torch.randn(10, 32, generator=g)[subjects] + 0.3 * torch.randn(60, 32, generator=g)
    acc, chance = evaluate.identity_probe(z.numpy(), subjects.numpy())
    assert chance == pytest.approx(0.1) and acc > 0.9
    acc, _ = evaluate.identity_probe(torch.randn(60, 32, generator=g).numpy(), subjects.numpy())
    assert acc < 0.4
