"""Train MIC (or one of its ablations, or the paper's RGB baseline) under a dataset's protocol.

    python train.py --dataset ckplus --root data/ckplus            # all 10 folds
    python train.py --dataset ckplus --root data/ckplus --fold 3   # one fold
    python train.py --dataset afew --root data/afew                # Train_AFEW -> Val_AFEW
    python train.py --dataset synthetic                            # generates the set first
    python train.py @configs/demo.args --fold 0                    # options from a file
    torchrun --nproc_per_node 2 train.py ...                       # DistributedDataParallel

Objective of the expression branch (Liu et al. 2021, arXiv 2010.10637): L_CE + α·MI(z_E; z_I) +
β·L_rec.
T_θ, the MI estimator's network, takes `--t-steps` steps per encoder step on pairs it is not
scored on: a memory of the detached (z_E, z_I) pairs of recent batches (`--mi-memory`) that holds
only T_θ's own share of the training clips (`--mi-split`); the MI term is T_θ's estimate on the
current batch's other clips (`mi.train_critic`). `--mi-memory 0` is the paper's procedure (T_θ
trained on the batch it scores). The MI term is logged for every variant (with `--no-mi` T_θ
still learns, but its estimate is not in the loss); the MI that counts is measured afterwards on
held-out clips by evaluate.py.

Output: OUT/<variant>/<split>[-seed<k>]/ with `ckpt.pt` (written atomically each epoch;
`--resume` continues a killed run, or a finished one to more --epochs, after checking that its
options and its split's clips and labels are the run's), `result.json`
(accuracy = WAR, UAR, per-class recall, the identity network used), `features.npz` (z_E and z_I
of the training and test clips, for evaluate.py's held-out MI and identity probes) and
TensorBoard logs in `tb/`. A lock file keeps two runs out of one folder.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import pickle
import random
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import identity_weights
import mi
import models
from datasets import PROTOCOLS, SPECS, Split, prepare_text, protocol, read_index
from evaluate import recall_metrics
from models import DEFAULT_IDENTITY, IDENTITY_DIMS, MIC, RANDOM, FaceNetMobileNet, build_identity
from reader import SCALES, ClipDataset, DecodeCache, collate, worker_init

ROOT = Path(__file__).resolve().parent

# Options that may differ when a run is resumed (everything else must match its checkpoint).
RESUMABLE = ("epochs", "workers", "cache", "device", "resume", "fold", "out", "root")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
        fromfile_prefix_chars="@",
    )
    p.convert_arg_line_to_args = args_of_line
    p.add_argument("--dataset", required=True, choices=sorted(SPECS))
    p.add_argument("--root", help="indexed data folder (default: data/<dataset>)")
    p.add_argument(
        "--fold",
        action="append",
        help="test fold(s) of the protocol (repeatable; default: all): 0..9 for "
        "CK+/MMI/synthetic, 1..5 for DFEW/MAFW (datasets.PROTOCOLS)",
    )
    p.add_argument("--out", default="runs/mic", help="run folder; the variant is a subfolder")
    p.add_argument("--name", help="variant name (default: derived from the options)")
    # objective
    p.add_argument("--alpha", type=float, default=0.1, help="weight of the MI term (or adversary)")
    p.add_argument("--beta", type=float, default=0.1, help="weight of the reconstruction term")
    p.add_argument(
        "--estimator",
        default="club",
        choices=sorted(mi.ESTIMATORS),
        help="the MI estimate the encoder minimises: CLUB's upper bound (default) or "
        "a lower bound (MINE, the paper's; NWJ; InfoNCE), floored at 0",
    )
    p.add_argument(
        "--mi-procedure",
        default="table",
        choices=mi.PROCEDURES,
        help="how T_θ learns and what the MI term scores: 'table' (default: T_θ on "
        "its own share of the training clips, the MI term on the others against "
        "--mi-negatives partners from every training clip), 'memory' (T_θ on "
        "recent batches of its clips, the MI term on the batch's others), "
        "'paper' (T_θ on the batch it scores)",
    )
    p.add_argument(
        "--mi-critic",
        choices=mi.CRITIC_NAMES,
        help="T_θ's form: for MINE, NWJ, InfoNCE 'mlp' (default, the "
        "reproduction's) or 'separable' g(z_E)·h(z_I); for CLUB's q(z_I | z_E) "
        "'ridge' (default: linear-Gaussian, fitted in closed form on T_θ's "
        "clips every step), 'linear' (the same by gradient steps) or 'mlp'",
    )
    p.add_argument(
        "--t-steps",
        type=int,
        default=10,
        help="T_θ updates per encoder update (benchmarks/mi_game.py)",
    )
    p.add_argument(
        "--mi-memory",
        type=int,
        default=8,
        help="'memory' procedure: T_θ's memory of recent pairs, in batches",
    )
    p.add_argument(
        "--mi-split",
        type=float,
        help="share of the training clips reserved for T_θ, the MI term computed on "
        "the others only (default: 0.5 with 'memory'; 0 with 'table': T_θ "
        "learns on every clip's latest z_E and the MI term scores every clip)",
    )
    p.add_argument(
        "--mi-ridge",
        type=float,
        default=0.1,
        help="CLUB's ridge q: penalty × the mean eigenvalue of z_E's scatter",
    )
    p.add_argument(
        "--mi-negatives",
        type=int,
        default=256,
        help="'table': marginal partners of the MI term per step",
    )
    p.add_argument("--mi-batch", type=int, default=64, help="'table': T_θ's batch of pairs")
    p.add_argument(
        "--mi-dims",
        type=int,
        default=16,
        help="'table': T_θ sees z_I's first principal components (whitened); 0: all",
    )
    p.add_argument("--mi-weight-decay", type=float, default=0.01, help="T_θ's weight decay")
    p.add_argument(
        "--mi-placebo",
        action="store_true",
        help="control: the MI term with z_I permuted across the clips (true MI 0); "
        "the decoder keeps the real z_I ('table')",
    )
    p.add_argument(
        "--mi-conditional",
        action="store_true",
        help="I(z_E; z_I | y): marginal partners of the same label and another subject ('table')",
    )
    p.add_argument("--lr-t", type=float, default=1e-3, help="T_θ's learning rate (constant)")
    p.add_argument(
        "--mi-hidden",
        type=int,
        default=512,
        help="width of T_θ (the separable critic's rank; not used by the ridge q)",
    )
    p.add_argument("--no-mi", action="store_true", help="MIC−MI: no MI term in the loss")
    p.add_argument("--adv", action="store_true", help="identity adversary behind gradient reversal")
    p.add_argument("--no-rec", action="store_true", help="MIC−Î: no reconstruction term")
    p.add_argument("--with-mv", action="store_true", help="MIC+T^t: add a motion-vector branch")
    p.add_argument(
        "--accumulate",
        action="store_true",
        help="residuals and vectors against the I-frame (pytorch-coviar's default) "
        "instead of the previous frame (the paper's Δ^t)",
    )
    p.add_argument(
        "--baseline",
        choices=["rgb"],
        help="rgb: the paper's RGB baseline (Mode VLSTM): decoded frames → CNN → LSTM "
        "→ classifier, no MI, no reconstruction, no identity branch",
    )
    p.add_argument(
        "--class-weights",
        action="store_true",
        help="weight L_CE by inverse class frequency (imbalanced sets: DFEW, MAFW, ...)",
    )
    # model
    p.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet18", "resnet6"])
    p.add_argument(
        "--backbone-weights",
        help="'imagenet' (torchvision's, downloaded once into torch's hub cache) or an "
        "ImageNet state-dict file",
    )
    p.add_argument("--hidden", type=int, default=512, help="LSTM size")
    p.add_argument(
        "--identity",
        choices=sorted(IDENTITY_DIMS),
        help="identity network f_I (default: the one the weights are for; "
        f"{DEFAULT_IDENTITY[0]} when no weights are named)",
    )
    p.add_argument(
        "--identity-weights",
        help=f"weights of f_I: a name ({DEFAULT_IDENTITY[1]} (default, offline), "
        "vggface2, casia-webface, facenet-mobilenet), a file, 'random' (on "
        "purpose), or 'pretrain' (synthetic set: train it on the set's identities)",
    )
    p.add_argument(
        "--identity-size",
        type=int,
        help="letterboxed input side of f_I (160: the published weights; default "
        "80 for the synthetic set's own pretraining)",
    )
    p.add_argument("--num-segments", type=int, default=8)
    p.add_argument("--size", type=int, default=112, help="input side (224: the paper's)")
    # optimisation
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", help="'epoch:lr,...' step schedule (default per dataset)")
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", help="folder for a cache of decoded clips (speeds up GPU runs)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run found in --out")
    p.add_argument("--max-steps", type=int, help="steps per epoch at most (smoke runs)")
    p.add_argument("--synthetic-subjects", type=int, default=40, help="size of a generated set")
    p.add_argument("--pretrain-epochs", type=int, default=6, help="identity pretraining epochs")
    args = p.parse_args(argv)
    check_args(p, args)
    if args.baseline == "rgb":
        args.no_mi = args.no_rec = True
    if args.identity_weights is None:
        args.identity_weights = DEFAULT_IDENTITY[1]
    if args.identity_size is None:  # our own pretraining on 128-px synthetic faces: 80 px
        args.identity_size = 80 if args.identity_weights == "pretrain" else 160
    for key, value in SPECS[args.dataset].defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.root = Path(args.root or f"data/{args.dataset}")
    args.out = Path(args.out)
    args.name = args.name or variant_name(args)
    return args


def args_of_line(line: str) -> list[str]:
    """The arguments of one line of an `@FILE` of options (configs/*.args): split on white space,
    from a `#` on a comment."""
    return line.split("#", 1)[0].split()


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any work, the values that cannot make a sensible run."""
    positive = {
        "--epochs": args.epochs,
        "--batch-size": args.batch_size,
        "--num-segments": args.num_segments,
        "--size": args.size,
        "--hidden": args.hidden,
        "--mi-hidden": args.mi_hidden,
        "--lr": args.lr,
        "--mi-ridge": args.mi_ridge,
        "--lr-t": args.lr_t,
        "--max-steps": args.max_steps,
    }
    for flag, value in positive.items():
        if value is not None and not value > 0:
            p.error(f"{flag} must be > 0, got {value}")
    if args.batch_size < 2:
        p.error(
            f"--batch-size must be at least 2 (the MI bound pairs clips), got {args.batch_size}"
        )
    for flag, value in {
        "--alpha": args.alpha,
        "--beta": args.beta,
        "--weight-decay": args.weight_decay,
        "--workers": args.workers,
        "--mi-memory": args.mi_memory,
    }.items():
        if not value >= 0:
            p.error(f"{flag} must be >= 0, got {value}")
    if args.t_steps < 1 and not (args.no_mi or args.baseline):
        p.error(f"--t-steps must be >= 1 with an MI term (T_θ must learn), got {args.t_steps}")
    if args.mi_split is None:
        args.mi_split = 0.0 if args.mi_procedure == "table" else 0.5
    if not 0 <= args.mi_split < 1:
        p.error(f"--mi-split must be in [0, 1), got {args.mi_split}")
    for flag, value in {"--mi-negatives": args.mi_negatives, "--mi-batch": args.mi_batch}.items():
        if not value >= 2:
            p.error(f"{flag} must be at least 2, got {value}")
    if args.mi_dims < 0:
        p.error(f"--mi-dims must be >= 0, got {args.mi_dims}")
    if (args.mi_placebo or args.mi_conditional) and args.mi_procedure != "table":
        p.error("--mi-placebo and --mi-conditional need --mi-procedure table")
    club = args.estimator == "club"
    if args.mi_critic is None:
        args.mi_critic = ("ridge" if args.mi_procedure == "table" else "linear") if club else "mlp"
    if args.mi_critic == "ridge" and args.mi_procedure != "table":
        p.error("--mi-critic ridge is fitted on the table: it needs --mi-procedure table")
    if (args.mi_critic in ("linear", "ridge")) != club and args.mi_critic != "mlp":
        p.error(
            f"--mi-critic {args.mi_critic} is not a critic of --estimator {args.estimator}: "
            "CLUB takes mlp, linear or ridge; MINE, NWJ and InfoNCE take mlp or separable"
        )
    folds = [s.test[0] for s in PROTOCOLS[args.dataset]]
    bad = [f for f in args.fold or [] if f not in folds]
    if bad:
        p.error(f"--fold {', '.join(bad)}: {args.dataset} has the test folds {', '.join(folds)}")
    if args.baseline and (args.adv or args.with_mv):
        p.error("--baseline rgb is the plain RGB model: no --adv, no --with-mv")
    if args.name is not None and (args.name in ("", ".", "..") or "/" in args.name):
        p.error(
            f"--name {args.name!r}: a variant name is one folder name inside --out (no '/', "
            "not '.' or '..')"
        )
    if args.schedule is not None:
        try:
            parse_schedule(args.schedule)
        except ValueError as exc:
            p.error(f"--schedule {args.schedule!r}: {exc}")


def variant_name(args: argparse.Namespace) -> str:
    """The row of the paper's table this configuration is: mic, mic-mi, mic-mi+adv, mic+mv, ..."""
    if args.baseline == "rgb":
        name = "rgb"
    else:
        name = "mic" + ("-mi" if args.no_mi else "") + ("+adv" if args.adv else "")
        name += ("+placebo" if args.mi_placebo else "") + ("+cond" if args.mi_conditional else "")
        name += ("-rec" if args.no_rec else "") + ("+mv" if args.with_mv else "")
    return name + ("" if args.backbone == "resnet50" else f"+{args.backbone}")


def parse_schedule(schedule: str) -> list[tuple[int, float]]:
    """The steps of a schedule 'e1:lr1,e2:lr2' as (epoch, lr) sorted by epoch; `ValueError`
    naming the first step that is not an integer epoch >= 0, a colon and a finite rate > 0."""
    steps: dict[int, float] = {}
    for step in (s for s in schedule.split(",") if s):
        epoch, _, rate = step.partition(":")
        try:
            e, r = int(epoch), float(rate)
        except ValueError:
            e, r = -1, math.nan
        if e < 0 or not (r > 0 and math.isfinite(r)):
            raise ValueError(
                f"step {step!r} is not EPOCH:LR (an integer epoch >= 0, a finite "
                "learning rate > 0), e.g. 30:1e-4"
            )
        if e in steps:
            raise ValueError(f"epoch {e} is given twice")
        steps[e] = r
    return sorted(steps.items())


def lr_at(epoch: int, lr: float, schedule: str) -> float:
    """Learning rate of `epoch` under a step schedule 'e1:lr1,e2:lr2' (lr until e1, ...)."""
    for start, rate in parse_schedule(schedule):
        if epoch >= start:
            lr = rate
    return lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (global state of libraries that use it)
    torch.manual_seed(seed)


def rank_seed(seed: int) -> int:
    """`seed` on rank 0 and in a single process; a seed of its own on every other DDP rank, so
    that the ranks' augmentation and dropout differ."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed} rank {rank}".encode()).digest()[:8], "big")


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(file)` into a temporary file beside `path`, then rename it to `path`: a killed run
    never leaves half a checkpoint, feature file or result."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def log0(*msg: object) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        tqdm.write(" ".join(str(m) for m in msg))


class TrainingError(RuntimeError):
    """A run that must stop: a non-finite loss, a resumed run with other options, a busy folder."""


@contextmanager
def folder_lock(folder: Path):
    """Hold `folder/.lock` (flock) for the duration: a second run on the same folder stops with a
    clear message; the lock of a dead process is released by the system and taken over."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / ".lock", "a+")  # noqa: SIM115 (closed by the `with` below)
    except OSError as exc:
        raise TrainingError(
            f"cannot write in {folder}: {exc.strerror or exc} (choose a --out you can write to)"
        ) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            raise TrainingError(
                f"{folder} is in use by {owner}: wait for it, or choose another --out/--name"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------
# Data: locate it, or generate the synthetic set as a user would (synthetic.py → reencode.sh →
# datasets.py); the identity network: named, from a file, or pretrained on the synthetic set's
# disjoint identities.
# ----------------------------------------------------------------------------------------------


def prepare_data(args: argparse.Namespace) -> None:
    """Make sure args.root holds an index.csv, generating the synthetic set when asked."""
    if (args.root / "index.csv").exists():
        return
    raw = args.root.with_name(args.root.name + "-raw")
    if args.dataset != "synthetic":
        has_mp4 = args.root.is_dir() and any(args.root.rglob("*.mp4"))
        what = (
            f"{args.root} holds videos but no index.csv: run\n"
            f"    python datasets.py --dataset {args.dataset} --root {args.root}"
            if has_mp4
            else prepare_text(args.dataset, raw, args.root)
        )
        sys.exit(f"train.py: no {args.dataset} data in {args.root}.\n{what}")
    py = sys.executable
    if not (raw / "synthetic.json").exists():
        run(
            [
                py,
                str(ROOT / "synthetic.py"),
                "--out",
                str(raw),
                "--subjects",
                str(args.synthetic_subjects),
                "--seed",
                str(args.seed),
                "--jobs",
                str(os.cpu_count() or 1),
            ]
        )
    run(["bash", str(ROOT / "reencode.sh"), str(raw), str(args.root)])
    run([py, str(ROOT / "datasets.py"), "--dataset", "synthetic", "--root", str(args.root)])


def run(cmd: list[str]) -> None:
    """Run a step of the pipeline; reencode.sh asks this interpreter for its ffmpeg."""
    log0("$", " ".join(cmd))
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHON": sys.executable})


def identity_network(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The frozen f_I: `--identity-weights` by name, file or 'random', or (synthetic set,
    'pretrain') FaceNetMobileNet pretrained here on the set's identities and cached."""
    weights = args.identity_weights
    if weights == "pretrain":
        if args.dataset != "synthetic":
            sys.exit("train.py: --identity-weights pretrain is for the synthetic set only")
        if args.identity not in (None, "facenet_mobilenet"):
            sys.exit(
                "train.py: pretraining on the synthetic identities needs --identity "
                "facenet_mobilenet (or pass --identity-weights)"
            )
        args.identity = "facenet_mobilenet"
        path = args.root / f"identity_facenet_mobilenet_{args.identity_size}px.pth"
        if not path.exists():
            if dist.is_initialized() and dist.get_rank() != 0:
                raise TrainingError(f"{path} missing: rank 0 should have written it")
            raw = args.root.with_name(args.root.name + "-raw") / "identities"
            acc = pretrain_identity(
                raw, path, args.pretrain_epochs, args.identity_size, args.seed, device
            )
            log0(f"identity network: {acc:.1%} identity accuracy on held-out frames -> {path}")
        weights = str(path)
    if args.identity is None:  # the network the weights are for; a file: the paper's network
        named = identity_weights.NAMED.get(weights)
        args.identity = (
            named.arch
            if named
            else DEFAULT_IDENTITY[0]
            if weights == RANDOM
            else "facenet_mobilenet"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)  # 'random' weights: one network per --seed, every rank
            return build_identity(args.identity, weights, size=args.identity_size).to(device)
    except (FileNotFoundError, RuntimeError, ValueError, KeyError) as exc:
        sys.exit(f"train.py: identity network: {exc}")


def pretrain_identity(
    folder: Path, out: Path, epochs: int, size: int, seed: int, device: torch.device
) -> float:
    """Train FaceNetMobileNet as an identity classifier on folder/<id>/*.png (held-out: every
    5th frame); save its state dict to `out`; return the held-out identity accuracy."""
    from PIL import Image

    from models import letterbox

    ids = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    if not ids:
        sys.exit(f"train.py: no identity folders in {folder} to pretrain the identity network")
    images, labels = [], []
    for k, d in enumerate(ids):
        for f in sorted(d.glob("*.png")):
            images.append(np.asarray(Image.open(f).convert("RGB")))
            labels.append(k)
    x = letterbox(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255, size)
    y = torch.tensor(labels)
    held = torch.arange(len(y)) % 5 == 4
    seed_everything(seed)
    net = FaceNetMobileNet(num_classes=len(ids)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    train_idx = torch.nonzero(~held).flatten()
    for _ in tqdm(range(epochs), desc="identity pretraining", unit="epoch"):
        net.train()
        for b in train_idx[torch.randperm(len(train_idx))].split(32):
            if len(b) < 2:
                continue
            xb = x[b].to(device)
            xb = torch.where(torch.rand(len(b), 1, 1, 1, device=device) < 0.5, xb, xb.flip(3))
            loss = F.cross_entropy(net.logits(xb), y[b].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        test = torch.nonzero(held).flatten()
        pred = torch.cat([net.logits(x[b].to(device)).argmax(1).cpu() for b in test.split(64)])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: torch.save(net.state_dict(), f))
    return float((pred == y[test]).float().mean())


@torch.no_grad()
def identity_features(
    ds: ClipDataset, f_i: torch.nn.Module, device: torch.device, workers: int
) -> torch.Tensor:
    """z_I of every clip of `ds` (frozen f_I on its I-frame), computed once."""
    loader = DataLoader(
        ds, batch_size=32, num_workers=workers, collate_fn=collate, worker_init_fn=worker_init
    )
    return torch.cat(
        [
            f_i(b["iframe"].to(device)).cpu()
            for b in tqdm(loader, desc="identity features z_I", leave=False)
        ]
    )


# ----------------------------------------------------------------------------------------------
# One split of the protocol: train, checkpoint each epoch, evaluate on the held-out clips.
# ----------------------------------------------------------------------------------------------


@dataclass
class Critic:
    """T_θ (inside the MI estimator), its optimiser, and where it learns: a table of every
    training clip (the default procedure), a memory of recent pairs, or neither (the paper's
    procedure, T_θ trained on the batch it scores)."""

    estimator: torch.nn.Module
    opt: torch.optim.Optimizer
    memory: mi.PairMemory | None = None
    table: mi.ClipTable | None = None


def build_critic(
    args: argparse.Namespace,
    ds: ClipDataset,
    d_e: int,
    z_i_train: torch.Tensor,
    device: torch.device,
) -> Critic:
    """T_θ for the procedure of `--mi-procedure` on the training clips of `ds` (z_I of each in
    `z_i_train`, in the dataset's order)."""
    table = None
    if args.mi_procedure == "table":
        n = len(ds.rows)
        own = (
            mi.critic_clips(torch.arange(n), args.mi_split)
            if args.mi_split
            else torch.ones(n, dtype=torch.bool)
        )
        number = {s: i for i, s in enumerate(ds.subjects)}
        subjects = torch.tensor([number[r["subject"]] for r in ds.rows])
        labels = torch.tensor([int(r["label"]) for r in ds.rows])
        table = mi.ClipTable(
            z_i_train,
            subjects,
            labels,
            own,
            conditional=args.mi_conditional,
            placebo=args.mi_placebo,
            dims=args.mi_dims or None,
            generator=torch.Generator().manual_seed(args.seed),
        )
    d_i = z_i_train.shape[1] if table is None else table.z_i.shape[1]
    extra = {"ridge": args.mi_ridge} if args.estimator == "club" else {}
    estimator = mi.build_estimator(
        args.estimator, d_e, d_i, hidden=args.mi_hidden, critic=args.mi_critic, **extra
    ).to(device)
    memory = (
        mi.PairMemory(args.mi_memory * args.batch_size) if args.mi_procedure == "memory" else None
    )
    opt = torch.optim.AdamW(estimator.parameters(), lr=args.lr_t, weight_decay=args.mi_weight_decay)
    return Critic(estimator, opt, memory, table)


def build(
    args: argparse.Namespace, ds: ClipDataset, z_i_train: torch.Tensor, device: torch.device
) -> tuple[MIC, Critic | None, torch.optim.Optimizer]:
    """The model, the MI critic (None for the RGB baseline) and the model's optimiser (Adam,
    β1 0.9). The baseline's model has no decoder and no input BatchNorm (its frames are
    ImageNet-normalised once, by the reader)."""
    seed_everything(args.seed)
    d_i = z_i_train.shape[1]
    model = MIC(
        ds.num_classes,
        args.num_segments,
        args.backbone,
        args.hidden,
        with_mv=args.with_mv,
        decoder=not args.no_rec,
        d_i=d_i,
        size=args.size,
        num_subjects=len(ds.subjects) if args.adv else 0,
        backbone_weights=args.backbone_weights,
        data_bn=args.baseline is None,
    ).to(device)
    opt = torch.optim.Adam(
        model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay
    )
    if args.baseline:
        return model, None, opt
    return model, build_critic(args, ds, model.d_e, z_i_train, device), opt


def make_datasets(args: argparse.Namespace, split: Split) -> tuple[ClipDataset, ...]:
    """(train, train in test mode, test) datasets of one split of the protocol."""
    cache = (
        DecodeCache(args.cache, short_side=math.ceil(args.size / min(SCALES)))
        if args.cache
        else None
    )
    common = dict(
        num_segments=args.num_segments,
        size=args.size,
        representation="rgb" if args.baseline else "residual",
        with_mv=args.with_mv,
        accumulate=args.accumulate,
        cache=cache,
    )
    return (
        ClipDataset(args.root, folds=split.train, train=True, apex=not args.no_rec, **common),
        ClipDataset(args.root, folds=split.train, apex=False, **common),
        ClipDataset(args.root, folds=split.test, apex=False, **common),
    )


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


@torch.no_grad()
def predict(
    model: MIC, ds: ClipDataset, args: argparse.Namespace, device: torch.device
) -> dict[str, np.ndarray]:
    """Logits, predictions and z_E of every clip of `ds` (test-mode sampling)."""
    model.eval()
    loader = DataLoader(
        ds,
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=collate,
        worker_init_fn=worker_init,
    )
    logits, z_e, labels, subjects = [], [], [], []
    for batch in tqdm(loader, desc="predict", leave=False):
        b = to_device(batch, device)
        with autocast(device):
            out = model(b["input"], b.get("mv"))
        logits.append(out["logits"].float().cpu())
        z_e.append(out["z_e"].float().cpu())
        labels.append(batch["label"])
        subjects.append(batch["subject"])
    logits_t = torch.cat(logits)
    if not torch.isfinite(logits_t).all():
        raise TrainingError(f"non-finite logits on {len(ds)} clips: the model is broken")
    return {
        "logits": logits_t.numpy(),
        "pred": logits_t.argmax(1).numpy(),
        "z_e": torch.cat(z_e).numpy(),
        "label": torch.cat(labels).numpy(),
        "subject": torch.cat(subjects).numpy(),
    }


def autocast(device: torch.device):
    """Mixed precision (bfloat16) on CUDA; full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def run_dir(args: argparse.Namespace, split: Split) -> Path:
    """OUT/<variant>/<split>, with -seed<k> for seeds other than 0 (folds × seeds of a study)."""
    return args.out / args.name / (split.name + (f"-seed{args.seed}" if args.seed else ""))


def result_epochs(fold_dir: Path) -> int | None:
    """The number of epochs of the result in `fold_dir` (None: no readable result.json)."""
    try:
        return len(json.loads((fold_dir / "result.json").read_text())["history"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished(args: argparse.Namespace, split: Split) -> bool:
    """A resumed run's split that holds its result of --epochs epochs: skipped."""
    return args.resume and result_epochs(run_dir(args, split)) == args.epochs


def load_checkpoint(path: Path, device: torch.device | str = "cpu", mmap: bool = False) -> dict:
    """A checkpoint of train.py (`mmap`: its tensors are read when used); a truncated, empty or
    foreign file stops the run with `TrainingError` saying what to do."""
    try:
        if not zipfile.is_zipfile(path):  # torch's own message on these misleads ("mmap ...")
            raise ValueError(
                "an empty file"
                if path.stat().st_size == 0
                else "not a whole checkpoint archive: truncated, or another file"
            )
        ckpt = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
        json.loads(ckpt["config"]), int(ckpt["epoch"])
    except (
        RuntimeError,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ) as exc:
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise TrainingError(
            f"{path}: ckpt.pt is damaged ({why}): delete it to train this split "
            "from the start, or put back a good copy"
        ) from None
    return ckpt


def check_splits(args: argparse.Namespace, splits: list[Split]) -> dict[str, dict]:
    """Before any work: every split must have training and test clips in the index of --root.
    Returns, per split, what its data is (sha256 of its clips' paths, subjects and labels, and
    the counts), which the checkpoint records and --resume compares."""
    index = args.root / "index.csv"
    try:
        rows = read_index(index)
    except (OSError, ValueError) as exc:
        raise TrainingError(str(exc)) from None
    data, empty = {}, []
    for split in splits:
        sides = {
            side: sorted((r["path"], r["subject"], r["label"]) for r in rows if r["fold"] in folds)
            for side, folds in (("train", split.train), ("test", split.test))
        }
        missing = [
            f"no {side} clips (fold {', '.join(getattr(split, side))})"
            for side, clips in sides.items()
            if not clips
        ]
        if missing:
            empty.append(f"{split.name} has {' and '.join(missing)}")
        data[split.name] = {
            "sha256": hashlib.sha256(json.dumps(sides).encode()).hexdigest(),
            "train": len(sides["train"]),
            "test": len(sides["test"]),
        }
    if empty:
        raise TrainingError(
            f"{index}: {'; '.join(empty)}. Index more clips, or leave such splits out with --fold"
        )
    return data


def check_resume(
    config: dict, args: argparse.Namespace, identity: dict, path: Path, data: dict | None = None
) -> None:
    """Refuse to continue a checkpoint whose model, data or objective options differ, or whose
    split had other clips or labels (`data`: `check_splits`'s entry of the split)."""
    now = options(args)
    was = config.get("options", {})
    diff = sorted(
        k for k in now.keys() | was.keys() if k not in RESUMABLE and now.get(k) != was.get(k)
    )
    if config.get("identity", {}).get("sha256") != identity.get("sha256"):
        diff.append("identity network weights")
    old = config.get("data")
    if data is not None and old is not None and old["sha256"] != data["sha256"]:
        diff.append(
            f"the split's clips or labels (training/test clips {old['train']}/"
            f"{old['test']} -> {data['train']}/{data['test']} in {args.root}/index.csv)"
        )
    if diff:
        raise TrainingError(
            f"{path} was trained with other options: "
            + ", ".join(
                f"{k} {was.get(k)!r} -> {now.get(k)!r}" if k in now or k in was else k for k in diff
            )
            + f". Resume with the run's own options (only {', '.join(RESUMABLE)} may change), "
            "or start a new run in another --out/--name"
        )


def claim(
    args: argparse.Namespace,
    splits: list[Split],
    identity: dict,
    data: dict[str, dict],
    stack: ExitStack,
) -> None:
    """Before any work: lock every split's folder for this run (`folder_lock`, held until the
    run ends) and check what is in it: a run there needs --resume, and a resumed checkpoint must
    have this run's options and data (`check_resume`) and no more epochs than --epochs."""
    for split in splits:
        fold_dir = run_dir(args, split)
        stack.enter_context(folder_lock(fold_dir))
        ckpt_path = fold_dir / "ckpt.pt"
        done = result_epochs(fold_dir)
        if not args.resume and (ckpt_path.exists() or (fold_dir / "result.json").exists()):
            raise TrainingError(
                f"{fold_dir} holds a run: pass --resume to continue it, or "
                "choose another --out/--name"
            )
        if args.resume and ckpt_path.exists():
            # mmap: only the config record is read here, not the tensors
            ckpt = load_checkpoint(ckpt_path, mmap=True)
            check_resume(json.loads(ckpt["config"]), args, identity, ckpt_path, data[split.name])
            trained = int(ckpt["epoch"]) + 1
            if trained > args.epochs:
                raise TrainingError(
                    f"{fold_dir} has trained {trained} epochs, more than --epochs "
                    f"{args.epochs}: resume it with --epochs {trained} or more, "
                    "or start a new run in another --out/--name"
                )
        elif args.resume and done is not None and done != args.epochs:
            raise TrainingError(
                f"{fold_dir} holds a result of {done} epochs and no ckpt.pt to "
                f"continue it to --epochs {args.epochs}: resume with --epochs "
                f"{done}, or start a new run in another --out/--name"
            )


def train_fold(
    args: argparse.Namespace,
    split: Split,
    device: torch.device,
    z_i_all: torch.Tensor,
    z_i_row: dict[str, int],
    identity: dict,
    data: dict | None = None,
) -> dict:
    """Train and test one split (its folder is claimed: locked, and checked for --resume);
    `data`: what the split's data is (`check_splits`), recorded in the checkpoint."""
    fold_dir = run_dir(args, split)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    result_path, ckpt_path = fold_dir / "result.json", fold_dir / "ckpt.pt"
    fold = split.name
    if finished(args, split):
        log0(f"{fold_dir}: already finished")
        return json.loads(result_path.read_text())
    train_ds, train_eval_ds, test_ds = make_datasets(args, split)
    # z_I of the training clips, in the dataset's order (precomputed once for every clip)
    z_i_train = z_i_all[[z_i_row[r["path"]] for r in train_ds.rows]].to(device)
    d_i = z_i_all.shape[1]
    model, critic, opt = build(args, train_ds, z_i_train, device)
    class_weights = None
    if args.class_weights:
        counts = torch.bincount(
            torch.tensor([int(r["label"]) for r in train_ds.rows]), minlength=train_ds.num_classes
        ).float()
        class_weights = (counts.sum() / counts.clamp(min=1) / train_ds.num_classes).to(device)
    config = {**model_config(args, train_ds, d_i, identity), "data": data}
    start, history = 0, []
    if args.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        if critic is not None:
            critic.estimator.load_state_dict(ckpt["estimator"])
            critic.opt.load_state_dict(ckpt["opt_t"])
            if critic.memory is not None and "memory_ids" in ckpt:
                critic.memory.push(ckpt["memory_z_e"], ckpt["memory_z_i"], ckpt["memory_ids"])
            if critic.table is not None and "table_z_e" in ckpt:
                critic.table.z_e = ckpt["table_z_e"].to(device)
                critic.table.seen = ckpt["table_seen"].cpu()
        start, history = ckpt["epoch"] + 1, json.loads(ckpt["history"])
        log0(f"{fold_dir}: resuming at epoch {start}")
        done = result_epochs(fold_dir)
        if done is not None:  # finished with fewer epochs (`claim` refuses more)
            log0(
                f"{fold_dir}: its result is of {done} epochs: continuing it from its checkpoint "
                f"to {args.epochs} epochs"
            )
    step_fn: torch.nn.Module = TrainForward(model)
    if dist.is_initialized():
        step_fn = DistributedDataParallel(step_fn, find_unused_parameters=True)
    writer = SummaryWriter(str(fold_dir / "tb"), purge_step=start) if rank0 else None

    for epoch in range(start, args.epochs):
        lr = lr_at(epoch, args.lr, args.schedule)
        for group in opt.param_groups:  # T_θ keeps its own constant rate (--lr-t)
            group["lr"] = lr
        seed = args.seed * 1000 + epoch
        seed_everything(rank_seed(seed))  # resumable: each epoch's randomness is fixed
        sampler = (
            DistributedSampler(train_ds, seed=seed, drop_last=True)  # one order for all
            if dist.is_initialized()
            else None
        )
        loader = DataLoader(
            train_ds,
            batch_size=args.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=args.workers,
            collate_fn=collate,
            drop_last=True,
            generator=torch.Generator().manual_seed(rank_seed(seed)),
            pin_memory=device.type == "cuda",
            worker_init_fn=worker_init,
        )
        step_fn.train()
        per_step: dict[str, list[float]] = {}
        steps = 0
        bar = tqdm(
            loader,
            desc=f"{args.name} {fold} epoch {epoch + 1}/{args.epochs}",
            leave=False,
            disable=not rank0,
        )
        for batch in bar:
            b = to_device(batch, device)
            terms = train_step(
                step_fn,
                critic,
                opt,
                b,
                z_i_train[b["index"]],
                args,
                device,
                class_weights,
                where=f"epoch {epoch + 1}, step {steps + 1}",
            )
            for k, v in terms.items():
                per_step.setdefault(k, []).append(v)
            steps += 1
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
            if args.max_steps and steps >= args.max_steps:
                break
        # per epoch: the mean of each term; mi_active the share of steps on which the MI term
        # moved z_E; mi_grad_ratio the median step's ‖α∇MI‖ / ‖∇L_CE‖
        means = {
            k: float(np.median(v) if k == "mi_grad_ratio" else np.mean(v))
            for k, v in per_step.items()
        }
        check_finite(model, f"epoch {epoch + 1}")
        history.append({"epoch": epoch, "lr": lr, **means})
        if rank0:
            for k, v in means.items():  # "mi": T_θ's estimate during training, not held out
                writer.add_scalar(f"train/{'mi_term_in_training' if k == 'mi' else k}", v, epoch)
            writer.add_scalar("train/lr", lr, epoch)
            state = {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "epoch": epoch,
                "history": json.dumps(history),
                "config": json.dumps(config),
            }
            if critic is not None:
                state.update(estimator=critic.estimator.state_dict(), opt_t=critic.opt.state_dict())
                if critic.memory is not None and len(critic.memory):
                    state.update(
                        memory_z_e=critic.memory.z_e,
                        memory_z_i=critic.memory.z_i,
                        memory_ids=critic.memory.ids,
                    )
                if critic.table is not None and critic.table.z_e is not None:
                    state.update(table_z_e=critic.table.z_e, table_seen=critic.table.seen)
            write_atomic(fold_dir / "ckpt.pt", lambda f, state=state: torch.save(state, f))
            log0(
                f"{args.name} {fold} epoch {epoch + 1}: "
                + " ".join(f"{k} {v:.4f}" for k, v in means.items())
            )

    result = {}
    if rank0:
        test = predict(model, test_ds, args, device)
        train_eval = predict(model, train_eval_ds, args, device)
        war, uar, recall = recall_metrics(test["label"], test["pred"], test_ds.num_classes)
        writer.add_scalar("test/war", war, args.epochs)
        writer.add_scalar("test/uar", uar, args.epochs)
        writer.close()
        z_i_test = z_i_all[[z_i_row[r["path"]] for r in test_ds.rows]].numpy()
        features = dict(
            train_z=train_eval["z_e"],
            train_zi=z_i_train.cpu().numpy(),
            train_subject=train_eval["subject"],
            train_label=train_eval["label"],
            test_z=test["z_e"],
            test_zi=z_i_test,
            test_subject=test["subject"],
            test_label=test["label"],
            test_pred=test["pred"],
            test_logits=test["logits"],
            test_path=np.array([r["path"] for r in test_ds.rows]),
        )
        write_atomic(fold_dir / "features.npz", lambda f: np.savez_compressed(f, **features))
        result = {
            "fold": fold,
            "seed": args.seed,
            "accuracy": war,
            "uar": uar,
            "per_class_recall": dict(zip(test_ds.class_names, recall, strict=True)),
            "num_test": len(test_ds),
            "num_train": len(train_ds),
            "classes": train_ds.class_names,
            "variant": args.name,
            "identity": identity,
            "options": options(args),
            "history": history,
        }
        write_atomic(
            fold_dir / "result.json", lambda f: f.write(json.dumps(result, indent=1).encode())
        )
        log0(f"{args.name} {fold}: test WAR {war:.2%}, UAR {uar:.2%} ({len(test_ds)} clips)")
    if dist.is_initialized():
        dist.barrier()
    return result


def train_step(
    step_fn: torch.nn.Module,
    critic: Critic | None,
    opt: torch.optim.Optimizer,
    b: dict,
    z_i: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
    class_weights: torch.Tensor | None = None,
    where: str = "",
) -> dict[str, float]:
    """One step: T_θ `t_steps` times on pairs it will not score (`mi.train_critic`), then f_E on
    L_CE + α·MI + β·L_rec. Stops with `TrainingError` on a non-finite term, before any update."""
    use_rec = not args.no_rec
    with autocast(device):
        out = step_fn(b["input"], b.get("mv"), z_i, use_rec)
    z_e = out["z_e"].float()
    terms = {"ce": F.cross_entropy(out["logits"].float(), b["label"], weight=class_weights)}
    raw = None if critic is None else mi_estimate(critic, z_e, z_i, b["index"], args)
    if raw is not None:
        with torch.no_grad() if args.no_mi else nullcontext():
            terms["mi"] = mi.mi_penalty(critic.estimator, raw)
    if "adv" in out:  # MIC−MI+Adv: the discriminator sits behind gradient reversal
        terms["adv"] = F.cross_entropy(out["adv"].float(), b["subject"])
    if use_rec and b["has_apex"].any():  # L_rec = ||I_apex − Dec(z_I, z_E)||²
        terms["rec"] = F.mse_loss(out["rec"].float()[b["has_apex"]], b["apex"][b["has_apex"]])
    weights = {
        "ce": 1.0,
        "mi": 0.0 if args.no_mi else args.alpha,
        "adv": args.alpha,
        "rec": args.beta,
    }
    loss = sum(weights[k] * v for k, v in terms.items() if weights[k])
    read = {**terms, "loss": loss}
    if raw is not None:
        forward = step_fn.module if isinstance(step_fn, DistributedDataParallel) else step_fn
        read.update(
            mi_raw=raw,
            **mi_gradients(out, terms, weights["mi"], forward.model.classifier[-1].weight),
        )
    # every term and the loss read once (one device sync), checked before the update
    values = dict(
        zip(read, torch.stack([v.detach().float() for v in read.values()]).tolist(), strict=True)
    )
    for k, v in values.items():
        if not math.isfinite(v):
            raise TrainingError(
                f"non-finite {k} ({v}) at {where}: training stopped, no "
                "result written (lower --lr/--alpha/--lr-t, or check the data)"
            )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    values["acc"] = (out["logits"].argmax(1) == b["label"]).float().mean().item()
    return values


def mi_estimate(
    critic: Critic,
    z_e: torch.Tensor,
    z_i: torch.Tensor,
    ids: torch.Tensor,
    args: argparse.Namespace,
) -> torch.Tensor | None:
    """T_θ's `t_steps` updates on pairs it will not score, then its raw MI estimate on the
    batch's scored clips (differentiable in z_E), or None when there is nothing to score."""
    if critic.table is not None:
        table = critic.table
        table.update(ids, z_e)
        table.train_critic(
            critic.estimator,
            critic.opt,
            args.t_steps,
            args.mi_batch,
            sync=average_gradients,
            exclude=ids,
        )
        scored = (
            (~table.own[ids.cpu()]).to(ids.device)
            if args.mi_split
            else torch.ones_like(ids, dtype=torch.bool)
        )
        if not scored.any():
            return None
        return table.penalty(critic.estimator, ids[scored], z_e[scored], args.mi_negatives)
    own = (
        mi.critic_clips(ids, args.mi_split)
        if critic.memory is not None
        else torch.zeros_like(ids, dtype=torch.bool)
    )
    mi.train_critic(
        critic.estimator,
        critic.opt,
        z_e,
        z_i,
        ids,
        args.t_steps,
        critic.memory,
        sync=average_gradients,
        critic=own,
    )
    scored = ~own  # T_θ fixed, on the batch's clips that T_θ never learns on
    return critic.estimator(z_e[scored], z_i[scored]) if int(scored.sum()) >= 2 else None


def mi_gradients(
    out: dict[str, torch.Tensor], terms: dict[str, torch.Tensor], alpha: float, head: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Is the MI term acting? `mi_active`: 1 when α·MI gives z_E a non-zero gradient this step;
    `mi_grad_ratio`: ‖α ∇_{z_E} MI‖ / ‖∇_{z_E} L_CE‖ (absent for MIC − MI, whose MI term is
    not in the loss). ∇_{z_E} L_CE is taken through the classifier's weights `head` (without
    its dropout mask), which also holds under DDP, whose outputs are no longer each other's
    graph."""
    if not alpha or not terms["mi"].requires_grad:
        return {"mi_active": out["z_e"].new_zeros(())}
    (g_mi,) = torch.autograd.grad(alpha * terms["mi"], out["z_e"], retain_graph=True)
    (g_logits,) = torch.autograd.grad(terms["ce"], out["logits"], retain_graph=True)
    norm_mi, norm_ce = g_mi.float().norm(), (g_logits.float() @ head.float()).norm()
    return {"mi_active": (norm_mi > 0).float(), "mi_grad_ratio": norm_mi / norm_ce.clamp(min=1e-12)}


def check_finite(model: torch.nn.Module, where: str) -> None:
    """Stop with `TrainingError` naming the model's parameters and buffers (BatchNorm
    statistics, ...) that are not finite, before they are checkpointed. (T_θ's are not checked:
    MINE's moving average is NaN until T_θ's first step; a broken T_θ shows in the MI term.)"""
    tensors = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    ok = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).tolist()  # one sync
    bad = [k for k, good in zip(tensors, ok, strict=True) if not good]
    if bad:
        raise TrainingError(
            f"non-finite {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
            f"after {where}: training stopped, no checkpoint of that state and "
            "no result written (lower --lr/--alpha/--lr-t, or check the data)"
        )


def average_gradients(module: torch.nn.Module) -> None:
    """DDP by hand for T_θ (small, outside DistributedDataParallel): mean of the ranks' grads."""
    if not dist.is_initialized():
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


class TrainForward(torch.nn.Module):
    """Everything of MIC a training step runs, in one forward (so that DDP sees it all)."""

    def __init__(self, model: MIC) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, mv: torch.Tensor | None, z_i: torch.Tensor, rec: bool
    ) -> dict[str, torch.Tensor]:
        out = self.model(x, mv)
        if rec:
            out["rec"] = self.model.reconstruct(z_i, out["z_e"])
        if self.model.discriminator is not None:
            out["adv"] = self.model.discriminator(out["z_e"])
        return out


def options(args: argparse.Namespace) -> dict:
    """The run's options as JSON values (stored in the checkpoint and result.json)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())}


def model_config(args: argparse.Namespace, ds: ClipDataset, d_i: int, identity: dict) -> dict:
    """What predict.py and evaluate.py need to rebuild the model of a checkpoint, the identity
    network used and every option of the run (for --resume's check)."""
    return {
        "num_classes": ds.num_classes,
        "class_names": ds.class_names,
        "num_segments": args.num_segments,
        "backbone": args.backbone,
        "hidden": args.hidden,
        "with_mv": args.with_mv,
        "decoder": not args.no_rec,
        "d_i": d_i,
        "size": args.size,
        "input": "rgb" if args.baseline else "residual",
        "data_bn": args.baseline is None,
        "accumulate": args.accumulate,
        "dataset": args.dataset,
        "variant": args.name,
        "root": str(args.root.resolve()),
        "identity": identity,
        "options": options(args),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    rank0 = not distributed or dist.get_rank() == 0
    try:
        with ExitStack() as claimed:
            run_all(args, device, rank0, distributed, claimed)
    except (TrainingError, FileNotFoundError) as exc:
        sys.exit(f"train.py: {exc}")
    if distributed:
        dist.destroy_process_group()


def run_all(
    args: argparse.Namespace,
    device: torch.device,
    rank0: bool,
    distributed: bool,
    claimed: ExitStack,
) -> list[dict]:
    """The whole run: data, f_I, its z_I once per clip, then every selected split."""
    if rank0:
        prepare_data(args)
        if args.backbone_weights == models.IMAGENET:  # fetched (or refused) before any work
            models.imagenet_weights(args.backbone)
    if distributed:
        dist.barrier()
    splits = [
        s
        for s in protocol(args.dataset, args.root / "index.csv")
        if args.fold is None or s.test[0] in args.fold
    ]
    data = check_splits(args, splits)
    if rank0:
        f_i = identity_network(args, device)
    if distributed:
        dist.barrier()
        if not rank0:
            f_i = identity_network(args, device)  # the cached file rank 0 made
    identity = {
        "network": args.identity,
        "weights": f_i.weights,
        "file": f_i.weights_file,
        "sha256": f_i.weights_sha256,
        "size": args.identity_size,
    }
    if f_i.weights == RANDOM:
        identity["seed"] = args.seed  # random weights drawn from --seed (`identity_network`)
    log0(
        f"identity network f_I: {args.identity}, weights {f_i.weights} "
        f"(sha256 {f_i.weights_sha256})"
    )
    if rank0:
        claim(args, splits, identity, data, claimed)
    everything = ClipDataset(
        args.root,
        num_segments=1,
        size=args.size,
        apex=False,
        iframe=True,
        iframe_size=args.identity_size,
    )
    if all(finished(args, s) for s in splits):
        log0("every split is finished: z_I not computed")
        z_i_all = torch.empty(0)
    else:
        z_i_all = identity_features(everything, f_i, device, args.workers)
    del f_i
    t0 = time.time()
    z_i_row = {r["path"]: i for i, r in enumerate(everything.rows)}
    results = [
        train_fold(args, s, device, z_i_all, z_i_row, identity, data[s.name]) for s in splits
    ]
    if rank0:
        war = [r["accuracy"] for r in results]
        uar = [r["uar"] for r in results]
        log0(
            f"{args.name}: WAR {np.mean(war):.2%} ± {np.std(war):.2%}, UAR {np.mean(uar):.2%} ± "
            f"{np.std(uar):.2%} over {len(war)} split(s) in {time.time() - t0:.0f} s -> "
            f"{args.out / args.name}"
        )
    return results


if __name__ == "__main__":
    main()
