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
from dataclasses import asdict, dataclass
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
from datasets import Split, prepare_text, protocol, read_index, validation_split
from frames import reencode_env
from metrics import recall_metrics
from models import DEFAULT_IDENTITY, MIC, RANDOM, FaceNetMobileNet, MICConfig, build_identity
from reader import SCALES, ClipDataset, DecodeCache, collate, model_outputs, worker_init
from train_options import RESUMABLE, lr_at, options_record, parse_args

ROOT = Path(__file__).resolve().parent


class TrainingError(RuntimeError):
    """A run that must stop: a non-finite loss, a resumed run with other options, a busy folder."""


def main(argv: list[str] | None = None) -> None:
    """The command line: the options, the device (and DDP's process group under torchrun), the
    run; a `TrainingError` is one line and exit status 1."""
    args = parse_args(argv, __doc__)
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
            train_splits(args, device, rank0, distributed, claimed)
    except (TrainingError, FileNotFoundError) as exc:
        sys.exit(f"train.py: {exc}")
    if distributed:
        dist.destroy_process_group()


def train_splits(
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
    if args.validate:
        try:
            splits = [validation_split(s) for s in splits]
        except ValueError as exc:
            raise TrainingError(f"--validate on {args.dataset}: {exc}") from None
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
        claim_folders(args, splits, identity, data, claimed)
    everything = ClipDataset(
        args.root,
        num_segments=1,
        size=args.size,
        apex=False,
        iframe=True,
        iframe_size=args.identity_size,
    )
    if all(is_finished(args, s) for s in splits):
        log0("every split is finished: z_I not computed")
        z_i_all = torch.empty(0)
    else:
        z_i_all = identity_features(
            everything,
            f_i,
            device,
            args.workers,
            cache=Path(args.cache) if args.cache else None,
            tag=identity,
            write=rank0,
        )
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


# ----------------------------------------------------------------------------------------------
# Before any training: the data (located, or the synthetic set generated as a user would:
# synthetic.py → reencode.sh → datasets.py), the identity network (named, from a file, or
# pretrained on the synthetic set's disjoint identities) and its z_I, the run folders (locked
# and checked).
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
        raise TrainingError(f"no {args.dataset} data in {args.root}.\n{what}")
    py = sys.executable
    if not (raw / "synthetic.json").exists():
        run_step(
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
    run_step(["bash", str(ROOT / "reencode.sh"), str(raw), str(args.root)])
    run_step([py, str(ROOT / "datasets.py"), "--dataset", "synthetic", "--root", str(args.root)])


def run_step(cmd: list[str]) -> None:
    """Run a step of the pipeline (reencode.sh's ffmpeg: `frames.reencode_env`)."""
    log0("$", " ".join(cmd))
    subprocess.run(cmd, check=True, env=reencode_env())


def identity_network(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The frozen f_I: `--identity-weights` by name, file or 'random', or (synthetic set,
    'pretrain') FaceNetMobileNet pretrained here on the set's identities and cached."""
    weights = args.identity_weights
    if weights == "pretrain":
        if args.dataset != "synthetic":
            raise TrainingError("--identity-weights pretrain is for the synthetic set only")
        if args.identity not in (None, "facenet_mobilenet"):
            raise TrainingError(
                "pretraining on the synthetic identities needs --identity "
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
        raise TrainingError(f"identity network: {exc}") from None


def pretrain_identity(
    folder: Path, out: Path, epochs: int, size: int, seed: int, device: torch.device
) -> float:
    """Train FaceNetMobileNet as an identity classifier on folder/<id>/*.png (held-out: every
    5th frame); save its state dict to `out`; return the held-out identity accuracy."""
    from PIL import Image

    from models import letterbox

    ids = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    if not ids:
        raise TrainingError(f"no identity folders in {folder} to pretrain the identity network")
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
    ds: ClipDataset,
    f_i: torch.nn.Module,
    device: torch.device,
    workers: int,
    cache: Path | None = None,
    tag: dict | None = None,
    write: bool = True,
) -> torch.Tensor:
    """z_I of every clip of `ds` (frozen f_I on its I-frame), computed once. With `cache`, kept
    there under a hash of `tag` (f_I's weights and input size) and of every clip's file (path,
    size, modification time), and read back by the next run on the same clips (`write`: this
    process may store it; one rank under DDP)."""
    path = None
    if cache is not None:
        files = [ds.root / r["path"] for r in ds.rows]
        key = json.dumps(
            [tag, str(ds.root.resolve()), [(str(f), *_stamp(f)) for f in files]], sort_keys=True
        )
        path = cache / f"z_i-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"
        if path.exists():
            try:
                z_i = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(z_i, torch.Tensor) and len(z_i) == len(ds):
                    log0(f"identity features z_I: read from {path}")
                    return z_i
            except (OSError, RuntimeError, ValueError, EOFError):
                pass
            log0(f"identity features z_I: {path} unreadable or not of these clips: recomputed")
    loader = DataLoader(
        ds, batch_size=32, num_workers=workers, collate_fn=collate, worker_init_fn=worker_init
    )
    z_i = torch.cat(
        [
            f_i(b["iframe"].to(device)).cpu()
            for b in tqdm(loader, desc="identity features z_I", leave=False)
        ]
    )
    if path is not None and write:
        cache.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: torch.save(z_i, f))
    return z_i


def _stamp(path: Path) -> tuple[int, int]:
    """(size, modification time in ns) of a clip's file (0, 0 when it is missing: the reader
    then says so)."""
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_size, st.st_mtime_ns)


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


def claim_folders(
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


def check_resume(
    config: dict, args: argparse.Namespace, identity: dict, path: Path, data: dict | None = None
) -> None:
    """Refuse to continue a checkpoint whose model, data or objective options differ, or whose
    split had other clips or labels (`data`: `check_splits`'s entry of the split)."""
    now = options_record(args)
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


def run_dir(args: argparse.Namespace, split: Split) -> Path:
    """OUT/<variant>/<split>, with -seed<k> for seeds other than 0 (folds × seeds of a study)."""
    return args.out / args.name / (split.name + (f"-seed{args.seed}" if args.seed else ""))


def result_epochs(fold_dir: Path) -> int | None:
    """The number of epochs of the result in `fold_dir` (None: no readable result.json)."""
    try:
        return len(json.loads((fold_dir / "result.json").read_text())["history"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_finished(args: argparse.Namespace, split: Split) -> bool:
    """A resumed run's split that holds its result of --epochs epochs: skipped."""
    return args.resume and result_epochs(run_dir(args, split)) == args.epochs


# ----------------------------------------------------------------------------------------------
# One split of the protocol: the model, the epoch loop (each epoch checkpointed), the test.
# ----------------------------------------------------------------------------------------------


def train_fold(
    args: argparse.Namespace,
    split: Split,
    device: torch.device,
    z_i_all: torch.Tensor,
    z_i_row: dict[str, int],
    identity: dict,
    data: dict | None = None,
) -> dict:
    """Train and test one split (its folder is claimed: locked, and checked for --resume):
    the model, restored from its checkpoint on --resume, the epochs (each checkpointed), then the
    test (`finish_fold`); `data`: what the split's data is (`check_splits`), recorded in the
    checkpoint."""
    fold_dir = run_dir(args, split)
    rank0 = is_rank0()
    fold = split.name
    if is_finished(args, split):
        log0(f"{fold_dir}: already finished")
        return json.loads((fold_dir / "result.json").read_text())
    train_ds, train_eval_ds, test_ds = make_datasets(args, split)
    # z_I of the clips, in each dataset's order (precomputed once for every clip)
    z_i_train = z_i_all[[z_i_row[r["path"]] for r in train_ds.rows]].to(device)
    z_i_test = z_i_all[[z_i_row[r["path"]] for r in test_ds.rows]]
    model, critic, opt = build_model(args, train_ds, z_i_train, device)
    class_weights = inverse_frequency_weights(train_ds, device) if args.class_weights else None
    config = {
        **run_config(args, train_ds, mic_config(args, train_ds, z_i_train.shape[1]), identity),
        "data": data,
    }
    start, history = restore(args, fold_dir, model, opt, critic, device)
    step_fn: torch.nn.Module = TrainForward(model)
    if dist.is_initialized():
        step_fn = DistributedDataParallel(step_fn, find_unused_parameters=True)
    writer = SummaryWriter(str(fold_dir / "tb"), purge_step=start) if rank0 else None

    for epoch in range(start, args.epochs):
        lr = lr_at(epoch, args.lr, args.schedule)
        for group in opt.param_groups:  # T_θ and the adversary keep their own constant rates
            if not group.get("constant"):
                group["lr"] = lr
        seed = args.seed * 1000 + epoch
        seed_everything(rank_seed(seed))  # resumable: each epoch's randomness is fixed
        loader = epoch_loader(args, train_ds, seed, device)
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
            state = checkpoint_state(model, opt, critic, epoch, history, config)
            write_atomic(fold_dir / "ckpt.pt", lambda f, state=state: torch.save(state, f))
            log0(
                f"{args.name} {fold} epoch {epoch + 1}: "
                + " ".join(f"{k} {v:.4f}" for k, v in means.items())
            )

    return finish_fold(
        args,
        split,
        model,
        (train_ds, train_eval_ds, test_ds),
        z_i_train,
        z_i_test,
        identity,
        history,
        writer,
        device,
    )


def inverse_frequency_weights(ds: ClipDataset, device: torch.device) -> torch.Tensor:
    """--class-weights: L_CE's weight of each class, inverse to its frequency in `ds`."""
    counts = torch.bincount(
        torch.tensor([int(r["label"]) for r in ds.rows]), minlength=ds.num_classes
    ).float()
    return (counts.sum() / counts.clamp(min=1) / ds.num_classes).to(device)


def restore(
    args: argparse.Namespace,
    fold_dir: Path,
    model: MIC,
    opt: torch.optim.Optimizer,
    critic: Critic | None,
    device: torch.device,
) -> tuple[int, list[dict]]:
    """On --resume, the state of the split's checkpoint put back into the model, its optimiser
    and T_θ (its memory or table too); (the first epoch to train, the history so far)."""
    ckpt_path = fold_dir / "ckpt.pt"
    if not (args.resume and ckpt_path.exists()):
        return 0, []
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
    if done is not None:  # finished with fewer epochs (`claim_folders` refuses more)
        log0(
            f"{fold_dir}: its result is of {done} epochs: continuing it from its checkpoint "
            f"to {args.epochs} epochs"
        )
    return start, history


def epoch_loader(
    args: argparse.Namespace, train_ds: ClipDataset, seed: int, device: torch.device
) -> DataLoader:
    """The training clips of one epoch, shuffled from the epoch's `seed` (under DDP: one order
    for all ranks, each its share)."""
    sampler = (
        DistributedSampler(train_ds, seed=seed, drop_last=True) if dist.is_initialized() else None
    )
    return DataLoader(
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


def checkpoint_state(
    model: MIC,
    opt: torch.optim.Optimizer,
    critic: Critic | None,
    epoch: int,
    history: list[dict],
    config: dict,
) -> dict:
    """What ckpt.pt holds after `epoch`: the model, T_θ (its memory or table too), their
    optimisers, the history and the run's record `config` (`run_config`)."""
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
    return state


def finish_fold(
    args: argparse.Namespace,
    split: Split,
    model: MIC,
    datasets: tuple[ClipDataset, ClipDataset, ClipDataset],
    z_i_train: torch.Tensor,
    z_i_test: torch.Tensor,
    identity: dict,
    history: list[dict],
    writer: SummaryWriter | None,
    device: torch.device,
) -> dict:
    """The trained model on the test clips and (in test mode) the training clips: rank 0 writes
    features.npz and result.json (and the test metrics to TensorBoard) and returns the result;
    the other ranks wait for it and return {}."""
    train_ds, train_eval_ds, test_ds = datasets
    fold_dir, fold = run_dir(args, split), split.name
    result = {}
    if is_rank0():
        test = clip_predictions(model, test_ds, args, device)
        train_eval = clip_predictions(model, train_eval_ds, args, device)
        war, uar, recall = recall_metrics(test["label"], test["pred"], test_ds.num_classes)
        writer.add_scalar("test/war", war, args.epochs)
        writer.add_scalar("test/uar", uar, args.epochs)
        writer.close()
        features = dict(
            train_z=train_eval["z_e"],
            train_zi=z_i_train.cpu().numpy(),
            train_subject=train_eval["subject"],
            train_label=train_eval["label"],
            test_z=test["z_e"],
            test_zi=z_i_test.numpy(),
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
            "options": options_record(args),
            "history": history,
        }
        write_atomic(
            fold_dir / "result.json", lambda f: f.write(json.dumps(result, indent=1).encode())
        )
        log0(f"{args.name} {fold}: test WAR {war:.2%}, UAR {uar:.2%} ({len(test_ds)} clips)")
    if dist.is_initialized():
        dist.barrier()
    return result


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


def build_model(
    args: argparse.Namespace, ds: ClipDataset, z_i_train: torch.Tensor, device: torch.device
) -> tuple[MIC, Critic | None, torch.optim.Optimizer]:
    """The model, the MI critic (None for the RGB baseline) and the model's optimiser (Adam,
    β1 0.9). The baseline's model has no decoder and no input BatchNorm (its frames are
    ImageNet-normalised once, by the reader)."""
    seed_everything(args.seed)
    cfg = mic_config(args, ds, z_i_train.shape[1])
    model = MIC.from_config(cfg, backbone_weights=args.backbone_weights).to(device)
    adversary = [] if model.discriminator is None else list(model.discriminator.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in adversary)]
    groups = [{"params": rest}] + (
        [{"params": adversary, "lr": args.lr_adv, "constant": True}] if adversary else []
    )
    opt = torch.optim.Adam(groups, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    if args.baseline:
        return model, None, opt
    return model, build_critic(args, ds, model.d_e, z_i_train, device), opt


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
    extra = {"ridge": args.mi_ridge, "joint": args.club_joint} if args.estimator == "club" else {}
    estimator = mi.build_estimator(
        args.estimator, d_e, d_i, hidden=args.mi_hidden, critic=args.mi_critic, **extra
    ).to(device)
    memory = (
        mi.PairMemory(args.mi_memory * args.batch_size) if args.mi_procedure == "memory" else None
    )
    opt = torch.optim.AdamW(estimator.parameters(), lr=args.lr_t, weight_decay=args.mi_weight_decay)
    return Critic(estimator, opt, memory, table)


def clip_predictions(
    model: MIC, ds: ClipDataset, args: argparse.Namespace, device: torch.device
) -> dict[str, np.ndarray]:
    """Logits, predictions and z_E of every clip of `ds` (test-mode sampling), with their
    labels and subjects; `TrainingError` on a non-finite logit."""
    out = model_outputs(
        model,
        ds,
        args.batch_size,
        device,
        args.workers,
        precision=lambda: autocast(device),
        progress="predict",
    )
    if not torch.isfinite(out["logits"]).all():
        raise TrainingError(f"non-finite logits on {len(ds)} clips: the model is broken")
    return {
        "logits": out["logits"].numpy(),
        "pred": out["logits"].argmax(1).numpy(),
        "z_e": out["z_e"].numpy(),
        "label": out["label"].numpy(),
        "subject": out["subject"].numpy(),
    }


# ----------------------------------------------------------------------------------------------
# One training step: T_θ's updates, then f_E's on L_CE + α·MI + β·L_rec.
# ----------------------------------------------------------------------------------------------


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
        out = step_fn(b["input"], b.get("mv"), z_i, b["label"], use_rec)
    z_e = out["z_e"].float()
    terms = {"ce": F.cross_entropy(out["logits"].float(), b["label"], weight=class_weights)}
    raw = None if critic is None else mi_estimate(critic, z_e, z_i, b["index"], args)
    if raw is not None:
        with torch.no_grad() if args.no_mi else nullcontext():
            terms["mi"] = mi.mi_penalty(critic.estimator, raw)
    if "adv" in out:  # MIC−MI+Adv: behind gradient reversal, which gives f_E −α × its gradient
        terms["adv"] = F.cross_entropy(out["adv"].float(), b["subject"])
    if use_rec and b["has_apex"].any():  # L_rec = ||I_apex − Dec(z_I, z_E)||²
        terms["rec"] = F.mse_loss(out["rec"].float()[b["has_apex"]], b["apex"][b["has_apex"]])
    weights = {"ce": 1.0, "mi": 0.0 if args.no_mi else args.alpha, "adv": 1.0, "rec": args.beta}
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


class TrainForward(torch.nn.Module):
    """Everything of MIC a training step runs, in one forward (so that DDP sees it all)."""

    def __init__(self, model: MIC) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        x: torch.Tensor,
        mv: torch.Tensor | None,
        z_i: torch.Tensor,
        y: torch.Tensor,
        rec: bool,
    ) -> dict[str, torch.Tensor]:
        out = self.model(x, mv)
        if rec:
            out["rec"] = self.model.reconstruct(z_i, out["z_e"])
        if self.model.discriminator is not None:
            out["adv"] = self.model.discriminator(out["z_e"], y)
        return out


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


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def autocast(device: torch.device):
    """Mixed precision (bfloat16) on CUDA; full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# ----------------------------------------------------------------------------------------------
# The checkpoint's record of the model, randomness, files, logging.
# ----------------------------------------------------------------------------------------------


def mic_config(args: argparse.Namespace, ds: ClipDataset, d_i: int) -> MICConfig:
    """The model of the run on the training clips of `ds` (z_I d_i-dimensional)."""
    return MICConfig(
        num_classes=ds.num_classes,
        num_segments=args.num_segments,
        backbone=args.backbone,
        hidden=args.hidden,
        with_mv=args.with_mv,
        decoder=not args.no_rec,
        d_i=d_i,
        size=args.size,
        num_subjects=len(ds.subjects) if args.adv else 0,
        adv_weight=args.alpha,
        adv_conditional=args.adv_conditional,
        data_bn=args.baseline is None,
    )


def run_config(args: argparse.Namespace, ds: ClipDataset, cfg: MICConfig, identity: dict) -> dict:
    """The checkpoint's record: the model (`cfg`, which rebuilds it: `MICConfig.from_checkpoint`),
    how its input is read, the identity network used and every option of the run (for
    --resume's check)."""
    return {
        "model": asdict(cfg),
        "class_names": ds.class_names,
        "input": "rgb" if args.baseline else "residual",
        "accumulate": args.accumulate,
        "dataset": args.dataset,
        "variant": args.name,
        "root": str(args.root.resolve()),
        "identity": identity,
        "options": options_record(args),
    }


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


def is_rank0() -> bool:
    """Rank 0 of DDP, or the only process."""
    return not dist.is_initialized() or dist.get_rank() == 0


def log0(*msg: object) -> None:
    if is_rank0():
        tqdm.write(" ".join(str(m) for m in msg))


if __name__ == "__main__":
    main()
