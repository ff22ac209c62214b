"""train.py and evaluate.py on a tiny synthetic set made by the user's path (synthetic.py →
reencode.sh → datasets.py): every variant learns, the RGB baseline holds no MI/decoder/identity
parameters, a non-finite loss stops the run, a killed run resumes to the same state and a resume
with other options is refused, two runs cannot share a folder, nonsensical options are refused
before any work, torchrun trains with 2 gloo processes through a rendezvous endpoint, evaluate.py
writes its results (WAR, UAR, held-out MI, both probes, paired statistics) and lists what it
left out."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
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
    "rgb": ["--baseline", "rgb"],
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
    z_i_train = torch.randn(len(ds), 24, generator=torch.Generator().manual_seed(1))
    model, critic, opt = train.build(args, ds, z_i_train, torch.device("cpu"))
    torch.manual_seed(0)
    z_i = z_i_train[batch["index"]]
    step = train.TrainForward(model)
    terms = [
        train.train_step(step, critic, opt, batch, z_i, args, torch.device("cpu"))
        for _ in range(12)
    ]
    assert all(torch.isfinite(torch.tensor(t["loss"])) for t in terms)
    # The encoder's own terms fall (the MI estimate rises as T_θ learns: it is a game).
    for key in ("ce", "rec"):
        if key in terms[0]:
            assert terms[-1][key] < terms[0][key], (key, [t[key] for t in terms])
    assert ("rec" in terms[0]) == (variant not in ("mic-rec", "rgb"))
    assert ("adv" in terms[0]) == (variant == "mic-mi+adv")
    if variant == "rgb":  # the paper's Mode VLSTM: CNN → LSTM → classifier, nothing else
        assert critic is None and model.decoder is None and model.discriminator is None
        assert isinstance(model.residual.data_bn, torch.nn.Identity)
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        assert held == {id(p) for p in model.parameters()}
        assert "mi" not in terms[0]


def test_lr_schedule():
    assert train.lr_at(0, 1e-3, "30:1e-4") == 1e-3
    assert train.lr_at(30, 1e-3, "30:1e-4") == 1e-4
    assert train.lr_at(65, 1e-4, "60:1e-7,30:8e-6") == 1e-7
    assert train.lr_at(5, 1e-4, "") == 1e-4


def test_ranks_draw_their_own_randomness(monkeypatch):
    """DDP: every rank but rank 0 seeds its augmentation and dropout apart (rank 0, like a single
    process, keeps the epoch's seed: single-process runs are unchanged)."""
    assert train.rank_seed(7) == 7  # no process group
    monkeypatch.setattr(train.dist, "is_initialized", lambda: True)
    draws = {}
    for rank in (0, 1, 2):
        monkeypatch.setattr(train.dist, "get_rank", lambda rank=rank: rank)
        train.seed_everything(train.rank_seed(7))
        draws[rank] = torch.rand(4)
    assert train.rank_seed(7) != 7 and train.rank_seed(7) == train.rank_seed(7)
    torch.manual_seed(7)
    assert torch.equal(draws[0], torch.rand(4))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    train.write_atomic(path, lambda f: torch.save({"epoch": 1}, f))
    assert torch.load(path, weights_only=True) == {"epoch": 1}

    def killed(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.write_atomic(path, killed)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_non_finite_term_stops_before_any_update(data, monkeypatch, tmp_path):
    """An injected inf (here in L_rec) stops the run naming the term, epoch and step; nothing is
    written: no checkpoint, no result."""
    monkeypatch.setattr(train.F, "mse_loss", lambda *a, **k: torch.tensor(float("inf")))
    with pytest.raises(SystemExit, match=r"non-finite rec .* at epoch 1, step 1"):
        train.main([*TINY, "--root", str(data), "--out", str(tmp_path / "r"), "--epochs", "1"])
    fold = tmp_path / "r" / "mic+resnet6" / "fold0"
    assert not (fold / "result.json").exists() and not (fold / "ckpt.pt").exists()


def test_non_finite_buffer_stops_before_its_checkpoint(data, monkeypatch, tmp_path):
    """A BatchNorm statistic that overflows (as `--lr 1e6` makes decoder.up.1.running_var inf)
    while every loss term stays finite stops the run at the end of the epoch, naming it; no
    checkpoint of that state and no result."""
    real = train.train_step

    def overflowing(step_fn, *a, **k):
        terms = real(step_fn, *a, **k)
        bn = next(m for m in step_fn.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var.fill_(float("inf"))
        return terms

    monkeypatch.setattr(train, "train_step", overflowing)
    with pytest.raises(SystemExit, match=r"non-finite \S*running_var after epoch 1"):
        train.main(
            [
                *TINY,
                "--root",
                str(data),
                "--out",
                str(tmp_path / "r"),
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--identity-weights",
                "random",
            ]
        )
    fold = tmp_path / "r" / "mic+resnet6" / "fold0"
    assert not (fold / "result.json").exists() and not (fold / "ckpt.pt").exists()


def test_damaged_checkpoint_says_so(data, tmp_path):
    """--resume on a truncated, random or empty ckpt.pt: one line saying it is damaged and what
    to do, not torch's traceback."""
    fold = tmp_path / "r" / "mic+resnet6" / "fold0"
    fold.mkdir(parents=True)
    good = io.BytesIO()
    torch.save({"config": "{}", "epoch": 0, "model": {"w": torch.zeros(1000)}}, good)
    for damage in (good.getvalue()[:2000], os.urandom(3000), b""):
        (fold / "ckpt.pt").write_bytes(damage)
        with pytest.raises(SystemExit, match=r"ckpt.pt is damaged .*: delete it") as stop:
            train.main(
                [
                    *TINY,
                    "--root",
                    str(data),
                    "--out",
                    str(tmp_path / "r"),
                    "--epochs",
                    "1",
                    "--resume",
                    "--identity-weights",
                    "random",
                ]
            )
        assert "\n" not in str(stop.value) and "mmap" not in str(stop.value)


def test_splits_without_clips_stop_before_any_work(data, tmp_path):
    """A split with no test (or training) clips in the index stops the run before f_I, z_I or
    any folder: nothing trains first, no .lock is left."""
    with open(data / "index.csv") as f:
        used = {r["fold"] for r in csv.DictReader(f)}
    assert "9" not in used and "0" in used
    with pytest.raises(SystemExit, match=r"index.csv: fold9 has no test clips \(fold 9\)"):
        train.main([*TINY, "--fold", "9", "--root", str(data), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_unwritable_out_is_one_line(data, tmp_path):
    """An --out that cannot be written (read-only; here also a file, which holds for root):
    one line naming the folder, before any work."""
    (tmp_path / "file").write_text("x")
    outs = [tmp_path / "file"]
    if os.geteuid() != 0:  # root writes into read-only folders
        (tmp_path / "ro").mkdir(mode=0o555)
        outs.append(tmp_path / "ro")
    for out in outs:
        with pytest.raises(SystemExit, match=f"cannot write in {out}/mic") as stop:
            train.main(
                [*TINY, "--root", str(data), "--out", str(out), "--identity-weights", "random"]
            )
        assert "\n" not in str(stop.value)


def test_no_mi_with_infinite_estimate_is_not_nan(data, monkeypatch):
    """MIC − MI: the MI estimate is logged but never multiplied into the loss (0·inf is NaN)."""
    args = train.parse_args([*TINY, "--root", str(data), "--no-mi"])
    ds = train.make_datasets(args, PROTOCOLS["synthetic"][1])[0]
    batch = collate([ds[i] for i in range(4)])
    z_i_train = torch.randn(len(ds), 24)
    model, critic, opt = train.build(args, ds, z_i_train, torch.device("cpu"))
    monkeypatch.setattr(train, "mi_estimate", lambda *a: torch.tensor(float("inf")))
    with pytest.raises(train.TrainingError, match="non-finite mi"):
        train.train_step(
            train.TrainForward(model),
            critic,
            opt,
            batch,
            z_i_train[batch["index"]],
            args,
            torch.device("cpu"),
        )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
        (["--batch-size", "1"], "--batch-size must be at least 2"),
        (["--num-segments", "0"], "--num-segments must be > 0"),
        (["--t-steps", "0"], "--t-steps must be >= 1"),
        (["--alpha", "-0.1"], "--alpha must be >= 0"),
        (["--beta", "-1"], "--beta must be >= 0"),
        (["--fold", "10"], "--fold 10: synthetic has the test folds 0, 1"),
        (["--mi-split", "1"], "--mi-split must be in"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--name", "../../../escaped"], "--name '../../../escaped': a variant name is one folder"),
        (["--name", "/tmp/escaped"], "a variant name is one folder name inside --out"),
        (["--name", ".."], "a variant name is one folder name inside --out"),
        (["--schedule", "1:-1e-2"], "--schedule '1:-1e-2': step '1:-1e-2' is not EPOCH:LR"),
        (["--schedule", "abc"], "step 'abc' is not EPOCH:LR"),
        (["--schedule", "30:1e-4,1:x"], "step '1:x' is not EPOCH:LR"),
        (["--schedule", "5:1e-4,5:1e-5"], "epoch 5 is given twice"),
    ],
)
def test_nonsensical_options_refused_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--dataset", "synthetic", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    train.parse_args(["--dataset", "synthetic", "--t-steps", "0", "--no-mi"])  # no T_θ: fine


def test_resume_refuses_other_options_and_locks(data, tmp_path):
    run = tmp_path / "run"
    subprocess.run(train_cmd(data, run, "--epochs", "1"), check=True, capture_output=True)
    fold = run / "mic+resnet6" / "fold0"
    (fold / "result.json").unlink()  # as if killed after its last checkpoint
    changed = subprocess.run(
        train_cmd(
            data, run, "--epochs", "2", "--resume", "--accumulate", "--lr", "0.5", "--alpha", "0"
        ),
        capture_output=True,
        text=True,
    )
    assert changed.returncode != 0
    for option in ("accumulate False -> True", "lr 0.001 -> 0.5", "alpha 0.1 -> 0.0"):
        assert option in changed.stderr, changed.stderr
    assert "epochs" not in changed.stderr.split("other options:")[1].split(".")[0]
    # A second run on a folder in use stops; the lock of a dead process is taken over.
    import fcntl

    with open(fold / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = subprocess.run(
            train_cmd(data, run, "--epochs", "2", "--resume"), capture_output=True, text=True
        )
    assert busy.returncode != 0 and "is in use" in busy.stderr, busy.stderr
    resumed = subprocess.run(
        train_cmd(data, run, "--epochs", "2", "--resume"), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((fold / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    again = subprocess.run(
        train_cmd(data, run, "--epochs", "2", "--resume"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "already finished" in again.stdout + again.stderr
    assert "z_I not computed" in again.stdout + again.stderr
    weights = Path(result["identity"]["file"])  # the synthetic set's own f_I, by sha256
    import hashlib

    assert result["identity"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_resume_with_more_epochs_continues_and_checks_the_data(data, tmp_path, capsys):
    """`--identity-weights random` is drawn from --seed (and recorded), so a finished 1-epoch
    split resumed with --epochs 2 continues from its checkpoint to the state of a 2-epoch run,
    exactly; a checkpoint refuses another index (--root) and fewer epochs than it has."""
    run, whole = tmp_path / "run", tmp_path / "whole"

    def train_main(root: Path, out: Path, *extra: str) -> None:
        train.main(
            [
                *TINY,
                "--root",
                str(root),
                "--out",
                str(out),
                "--identity-weights",
                "random",
                "--max-steps",
                "1",
                *extra,
            ]
        )

    train_main(data, run, "--epochs", "1")
    with open(data / "index.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), reader.fieldnames
    drop = [i for i, r in enumerate(rows) if r["fold"] == "1"][:2]  # 2 training clips of fold0
    other = tmp_path / "other"
    other.mkdir()
    with open(other / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(r for i, r in enumerate(rows) if i not in drop)
    n_train = sum(r["fold"] != "0" for r in rows)
    n_test = len(rows) - n_train
    with pytest.raises(
        SystemExit,
        match=re.escape(
            f"the split's clips or labels (training/test clips {n_train}/{n_test} -> "
            f"{n_train - 2}/{n_test}"
        ),
    ):
        train_main(other, run, "--epochs", "1", "--resume")
    capsys.readouterr()
    train_main(data, run, "--epochs", "2", "--resume")
    assert "its result is of 1 epochs: continuing it" in capsys.readouterr().out
    fold = run / "mic+resnet6" / "fold0"
    result = json.loads((fold / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    assert result["identity"]["weights"] == "random" and result["identity"]["seed"] == 0
    train_main(data, whole, "--epochs", "2")
    a, b = _state(whole), _state(run)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(SystemExit, match="has trained 2 epochs, more than --epochs 1"):
        train_main(data, run, "--epochs", "1", "--resume")


def test_checkpoint_records_an_absolute_root(monkeypatch, tmp_path):
    """evaluate.py (its speed step) reads the data root from the checkpoint: absolute, so that
    it works from any folder."""
    import types

    monkeypatch.chdir(tmp_path)
    args = train.parse_args([*TINY, "--root", "rel/data"])
    ds = types.SimpleNamespace(num_classes=2, class_names=["a", "b"])
    assert train.model_config(args, ds, 8, {})["root"] == str(tmp_path / "rel" / "data")


def _state(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "mic+resnet6" / "fold0" / "ckpt.pt", weights_only=True)
    return {**ckpt["model"], **{f"T.{k}": v for k, v in ckpt["estimator"].items()}}


def test_killed_run_resumes_to_the_same_state(data, tmp_path):
    whole = tmp_path / "whole"
    subprocess.run(train_cmd(data, whole, "--epochs", "3"), check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(data, killed, "--epochs", "3"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = killed / "mic+resnet6" / "fold0" / "ckpt.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = torch.load(ckpt, weights_only=True)["epoch"]
    assert epoch < 2, "the run finished before it could be killed"
    # Without --resume the run refuses to overwrite; with it, it continues where it stopped.
    refused = subprocess.run(
        train_cmd(data, killed, "--epochs", "3"), capture_output=True, text=True
    )
    assert refused.returncode != 0 and "--resume" in refused.stderr
    resumed = subprocess.run(
        train_cmd(data, killed, "--epochs", "3", "--resume"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"resuming at epoch {epoch + 1}" in resumed.stdout + resumed.stderr
    a, b = _state(whole), _state(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(
    "flags, variant",
    [
        (["--no-mi", "--adv"], "mic-mi+adv+resnet6"),
        # T_θ's memory holds < 2 usable pairs on one rank and not on the other: the ranks must still
        # agree on T_θ's steps (they all-reduce its gradients), or gloo waits until its timeout
        (["--mi-procedure", "memory", "--estimator", "mine", "--mi-split", "0.1"], "memory"),
        # the default procedure, its table and diagnostics (batches of 2: T_θ has clips to learn on
        # at the second step of each rank)
        (["--batch-size", "2", "--mi-batch", "2"], "mic+resnet6"),
    ],
)
def test_torchrun_two_gloo_processes(data, tmp_path, flags, variant):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(  # the multi-node launch path: a rendezvous endpoint, --nnodes
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            "localhost:29533",
            "--rdzv_id",
            "mic-test",
            str(ROOT / "train.py"),
            *TINY,
            "--root",
            str(data),
            "--out",
            str(tmp_path / "ddp"),
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--name",
            variant,
            *flags,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / variant / "fold0" / "result.json").read_text())
    assert 0.0 <= result["accuracy"] <= 1.0 and result["history"][0]["epoch"] == 0
    history = result["history"][0]
    if "--no-mi" in flags:  # its MI estimate, if any, is logged, never in the loss
        assert history.get("mi_active", 0.0) == 0.0
    elif "memory" in flags:  # MINE floored at 0: logged, and silent when below 0
        assert "mi_raw" in history and "mi_active" in history, history
    else:  # the default: CLUB's term moves z_E once T_θ has learned
        assert history["mi_active"] > 0.0, history


def test_evaluate_writes_results(tiny_run):
    run = tiny_run
    res = json.loads((run / "results.json").read_text())
    names = [v["variant"] for v in res["variants"]]
    assert names == ["mic+resnet6", "mic-mi+resnet6"]
    for v in res["variants"]:
        assert v["splits"] == ["fold0", "fold1"] and len(v["accuracy_per_split"]) == 2
        assert 0 <= v["probe_train_mean"] <= 1 and 0 <= v["uar_mean"] <= 1
        assert len(v["mi_per_split"]) == len(v["mi_shuffled_per_split"]) == 2
        assert (run / v["variant"] / "confusion.png").stat().st_size > 1000
    (c,) = [c for c in res["comparisons"] if c["metric"] == "accuracy_per_split"]
    a, b = res["variants"]
    diffs = [x - y for x, y in zip(a["accuracy_per_split"], b["accuracy_per_split"], strict=True)]
    assert c["n"] == 2 and c["mean"] == pytest.approx(sum(diffs) / 2)
    assert c["ci95"][0] <= c["mean"] <= c["ci95"][1]
    for v, c in zip(res["variants"], res["probe_over_majority"], strict=True):
        gaps = [
            p - m
            for p, m in zip(
                v["probe_test_per_split"], v["probe_test_majority_per_split"], strict=True
            )
        ]
        assert c["a"] == f"{v['variant']} probe" and c["b"] == "majority baseline"
        assert c["n"] == 2 and c["mean"] == pytest.approx(sum(gaps) / 2)
    for v in res["variants"]:  # identity measured with power; the MI term's diagnostics
        dep = v["dependence"]
        assert dep["test"] == "ridge" and 0 < dep["p"] <= 1 and math.isfinite(dep["statistic"])
        assert [r["split"] for r in dep["per_split"]] == ["fold0", "fold1"]
        assert all(0 < r["p"] <= 1 for r in dep["per_split"])
        assert len(v["probe_resid_per_split"]) == 2
        for key in evaluate.DIAGNOSTICS:
            assert len(v[f"{key}_per_split"]) == 2
    for c in res["comparisons"] + res["probe_over_majority"]:
        sizes = [
            (json.loads((run / "mic+resnet6" / s / "result.json").read_text())[k])
            for k in ("num_test", "num_train")
            for s in ("fold0", "fold1")
        ]
        assert c["test_train_ratio"] == pytest.approx((sizes[0] + sizes[1]) / (sizes[2] + sizes[3]))
        assert c["p_corrected"] >= c["p"]
    assert {c["metric"] for c in res["comparisons"]} >= {"probe_resid_per_split"}
    paths = {r["path"] for r in res["speed"]}
    assert {"residual + resnet6+LSTM", "rgb + resnet50+LSTM"} <= paths
    md = (run / "results.md").read_text()
    assert "label-residualised" in md and "dependence z_E ~ z_I" in md
    assert "Nadeau–Bengio corrected" in md and "MI term, last epoch" in md
    assert "MIC − MI, ResNet6" in md and "clips/s" in md and "Verdict (accuracy)" in md
    assert "sha256" in md and "UAR" in md and "against the majority baseline" in md


def test_evaluate_lists_what_it_leaves_out(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "mic+resnet6", run / "mic+resnet6")
    (run / "mic+resnet6" / "fold1" / "result.json").write_text("{not json")
    nan = run / "mic+resnet6" / "fold2"
    shutil.copytree(run / "mic+resnet6" / "fold0", nan)
    result = json.loads((nan / "result.json").read_text())
    (nan / "result.json").write_text(json.dumps({**result, "accuracy": float("nan")}))
    unfinished = run / "mic+resnet6" / "fold3"
    shutil.copytree(run / "mic+resnet6" / "fold0", unfinished)
    (unfinished / "result.json").unlink()
    evaluate.main([str(run), "--no-speed"])
    out = capsys.readouterr().out
    assert "fold1: unreadable result.json" in out and "fold2: non-finite accuracy" in out
    assert "fold3: unfinished" in out
    res = json.loads((run / "results.json").read_text())
    assert res["variants"][0]["splits"] == ["fold0"]


def test_evaluate_shows_the_mi_terms_diagnostics(tiny_run, tmp_path):
    """The last epoch's mi_raw, mi_active, mi_grad_ratio of each split's history, averaged over
    the splits that have them; "–" where no split does (runs from before they were recorded)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for split, values in (("fold0", (0.2, 0.9, 0.5)), ("fold1", (0.4, 0.7, None))):
        path = run / "mic+resnet6" / split / "result.json"
        result = json.loads(path.read_text())
        result["history"][-1].update(
            {k: v for k, v in zip(evaluate.DIAGNOSTICS, values, strict=True) if v is not None}
        )
        result["history"].insert(0, {**result["history"][-1], "mi_raw": 9.0})  # not the last
        path.write_text(json.dumps(result))
    evaluate.main([str(run), "--no-speed"])
    mic, base = json.loads((run / "results.json").read_text())["variants"]
    assert mic["mi_raw_per_split"] == [0.2, 0.4] and mic["mi_raw_mean"] == pytest.approx(0.3)
    assert mic["mi_active_mean"] == pytest.approx(0.8) and mic["mi_grad_ratio_mean"] == 0.5
    assert not any(math.isfinite(x) for x in base["mi_raw_per_split"])
    rows = [r for r in (run / "results.md").read_text().splitlines() if r.startswith("| mic")]
    assert "| 0.3 / 0.8 / 0.5 |" in rows[0] and "| – / – / – |" in rows[1]


def test_evaluate_against_another_run(tiny_run, tmp_path):
    """--against pairs each variant with its namesake in another evaluated run: here a copy of
    MIC − MI whose fold-1 predictions are all right."""
    import shutil

    import numpy as np

    run, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_run / "mic-mi+resnet6", other / "mic-mi+resnet6")
    features = other / "mic-mi+resnet6" / "fold1" / "features.npz"
    f = dict(np.load(features))
    f["test_pred"] = f["test_label"]
    np.savez_compressed(features, **f)
    with pytest.raises(SystemExit, match="evaluate.py .*other"):
        evaluate.main([str(run), "--no-speed", "--against", str(other)])
    evaluate.main([str(other), "--no-speed"])
    evaluate.main([str(run), "--no-speed", "--against", str(other)])
    res = json.loads((run / "results.json").read_text())
    mine = next(v for v in res["variants"] if v["variant"] == "mic-mi+resnet6")
    fold1 = mine["accuracy_per_split"][1]
    assert fold1 < 1  # else the pairing could not show
    (c,) = [c for c in res["against"] if c["metric"] == "accuracy_per_split"]
    assert c["n"] == 2 and c["mean"] == pytest.approx((fold1 - 1) / 2)
    assert c["sd"] == pytest.approx((1 - fold1) / 2**0.5)
    assert c["a"] == f"{run}: mic-mi+resnet6" and c["b"] == f"{other}: mic-mi+resnet6"
    assert "splits both runs finished" in (run / "results.md").read_text()


def test_recall_metrics_hand_computed():
    labels = [0, 0, 0, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    war, uar, recall = evaluate.recall_metrics(labels, preds, 4)  # class 3 absent
    assert war == pytest.approx(3 / 6)
    assert recall[:3] == pytest.approx([1 / 3, 1.0, 1 / 2]) and recall[3] != recall[3]
    assert uar == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)


def test_paired_ci_agrees_with_the_t_test():
    """The verdict's CI is the paired t interval: it excludes 0 exactly when p < 0.05, e.g. not
    for the c = 0.5 study cell (−4.2 ± 7.6 points over 10 splits, p = 0.12)."""
    splits = [f"fold{k}" for k in range(5)]
    a = {
        "variant": "a",
        "splits": splits,
        "folds": splits,
        "accuracy_per_split": [0.50, 0.60, 0.55, 0.40, 0.70],
    }
    b = {"variant": "b", "splits": splits, "accuracy_per_split": [0.45, 0.50, 0.56, 0.41, 0.60]}
    c = evaluate.paired(a, b)
    d = [0.05, 0.10, -0.01, -0.01, 0.10]  # by hand: mean 0.046, sd 0.05505, t(4) 2.776
    half = 2.7764451 * 0.0550454 / 5**0.5
    assert c["mean"] == pytest.approx(sum(d) / 5) and c["sd"] == pytest.approx(0.0550454, 1e-5)
    assert c["ci95"] == pytest.approx([0.046 - half, 0.046 + half], abs=1e-6)
    assert (c["ci95"][0] > 0) == (c["p"] < 0.05)
    assert "no difference shown" in evaluate.verdict(c)  # p = 0.14
    b["accuracy_per_split"] = [x - 0.05 + 0.001 * k for k, x in enumerate(a["accuracy_per_split"])]
    c = evaluate.paired(a, b)
    assert c["p"] < 0.05 and c["ci95"][0] > 0 and "better" in evaluate.verdict(c)
    assert "folds" not in c  # one seed: the splits are the folds


def test_paired_over_seeds_averages_each_fold():
    """A fold's seeds share their test subjects: with 2 seeds the verdict comes from the t-test
    over the 3 folds (seeds averaged), which here holds 0 while the one over 6 splits does not."""
    splits = [f"fold{k}{s}" for k in range(3) for s in ("", "-seed1")]
    d = [0.10, 0.10, 0.08, 0.08, 0.03, 0.03]
    folds = [f"fold{k}" for k in range(3) for _ in range(2)]
    a = {
        "variant": "a",
        "splits": splits,
        "folds": folds,
        "accuracy_per_split": [0.5 + x for x in d],
    }
    b = {"variant": "b", "splits": splits, "accuracy_per_split": [0.5] * 6}
    c = evaluate.paired(a, b)
    assert c["n"] == 6 and c["folds"] == 3 and c["mean"] == pytest.approx(0.07)
    assert c["ci95"][0] > 0 and c["p"] < 0.05  # 6 splits: sd 0.0323, t(5) 2.571
    half = 4.3026527 * 0.0360555 / 3**0.5  # 3 folds [0.10, 0.08, 0.03]: sd 0.03606, t(2)
    assert c["fold_ci95"] == pytest.approx([0.07 - half, 0.07 + half], abs=1e-6)
    assert c["fold_p"] > 0.05 and c["fold_ci95"][0] < 0
    assert "no difference shown" in evaluate.verdict(c) and "over 3 folds" in evaluate.verdict(c)
    assert "| 3, [" in evaluate.paired_cells(c)


def test_comparisons_pair_the_probe_leaving_out_splits_without_one():
    """MIC's claim is a lower unseen-clip probe: comparisons pair it as they pair accuracy, over
    the splits where both variants have a probe, and say "lower", not "worse"."""
    nan = float("nan")
    splits = [f"fold{k}" for k in range(4)]
    mic = {
        "variant": "mic+resnet6",
        "splits": splits,
        "folds": splits,
        "accuracy_per_split": [0.5] * 4,
        "uar_per_split": [0.4] * 4,
        "probe_test_per_split": [0.10, 0.12, nan, 0.09],
    }
    base = {
        "variant": "mic-mi+resnet6",
        "splits": splits,
        "folds": splits,
        "accuracy_per_split": [0.5] * 4,
        "uar_per_split": [0.4] * 4,
        "probe_test_per_split": [0.20, 0.21, 0.5, 0.20],
    }
    (c,) = [c for c in evaluate.comparisons([mic, base]) if c["metric"] == "probe_test_per_split"]
    assert c["n"] == 3 and c["mean"] == pytest.approx(-0.1)
    assert c["ci95"][1] < 0 and "mic+resnet6 lower than mic-mi+resnet6" in evaluate.verdict(c)


def test_missing_dataset_says_what_to_do(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--dataset",
            "afew",
            "--root",
            str(tmp_path / "afew"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert "Train_AFEW" in run.stderr and "reencode.sh" in run.stderr


def test_identity_probe_finds_identity():
    g = torch.Generator().manual_seed(0)
    subjects = torch.arange(10).repeat_interleave(6)
    z = torch.randn(10, 32, generator=g)[subjects] + 0.3 * torch.randn(60, 32, generator=g)
    acc, chance, majority = evaluate.identity_probe(z.numpy(), subjects.numpy())
    assert chance == pytest.approx(0.1) and acc > 0.9 and majority == pytest.approx(0.1)
    acc, _, _ = evaluate.identity_probe(torch.randn(60, 32, generator=g).numpy(), subjects.numpy())
    assert acc < 0.4


def test_identity_weights_that_cannot_be_had_stop_the_run(data, monkeypatch, tmp_path):
    """No silent random identity network: a named download that cannot be had (offline) stops
    train.py with one line naming the file and where to put it, before any training."""
    import dataclasses

    import identity_weights

    named = identity_weights.NAMED["facenet-mobilenet"]
    monkeypatch.setitem(
        identity_weights.NAMED,
        "facenet-mobilenet",
        dataclasses.replace(named, url="http://127.0.0.1:9/facenet_mobilenet.pth"),
    )
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(SystemExit, match="facenet_mobilenet.pth") as stop:
        train.main(
            [
                *TINY,
                "--root",
                str(data),
                "--out",
                str(tmp_path / "r"),
                "--identity-weights",
                "facenet-mobilenet",
            ]
        )
    assert str(tmp_path / "hub") in str(stop.value) and "\n" not in str(stop.value)
    assert not (tmp_path / "r").exists()


def test_imagenet_weights_offline_is_one_line(data, tmp_path):
    """Offline and not cached, `--backbone-weights imagenet` stops before any work with one line
    naming the file and the folder (the download is refused by a proxy that answers nothing)."""
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    res = subprocess.run(
        train_cmd(
            data, tmp_path / "run", "--backbone", "resnet18", "--backbone-weights", "imagenet"
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"train.py: resnet18-f37072fd.pth is not in {folder} and could not be downloaded"
        )
    )
    assert not (tmp_path / "run").exists()
