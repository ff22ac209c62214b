"""Train MIC (or one of its ablations) under a dataset's protocol.

    python train.py --dataset ckplus --root data/ckplus            # all 10 folds
    python train.py --dataset ckplus --root data/ckplus --fold 3   # one fold
    python train.py --dataset afew --root data/afew                # Train_AFEW -> Val_AFEW
    python train.py --dataset synthetic                            # generates the set first
    torchrun --nproc_per_node 2 train.py ...                       # DistributedDataParallel

Objective of the expression branch (MISSION.md section 1): L_CE + α·MI(z_E; z_I) + β·L_rec,
with T_θ trained `--t-steps` times per step to keep the MI estimate tight. The MI estimate is
logged for every variant (with `--no-mi` T_θ still learns, but its estimate is not in the loss),
so that runs with and without the regulariser can be compared.

Output: OUT/<variant>/fold<k>/ with `ckpt.pt` (written atomically each epoch; `--resume`
continues a killed run), `result.json` (test accuracy and predictions), `features.npz` (z_E of
train and test clips, for evaluate.py's identity probe) and TensorBoard logs in `tb/`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets import PROTOCOLS, Split
from mi import ESTIMATORS, build_estimator
from models import MIC, FaceNetMobileNet, build_identity
from reader import SCALES, ClipDataset, DecodeCache, collate

ROOT = Path(__file__).resolve().parent

# Per-dataset defaults (MISSION.md section 1). The report's CK+/MMI learning rate, 1e-1 with Adam,
# does not train (the loss diverges); `--lr 1e-1 --schedule 30:1e-2` reproduces it as written.
DEFAULTS = {
    "ckplus": dict(lr=1e-3, schedule="30:1e-4", epochs=100),
    "mmi": dict(lr=1e-3, schedule="30:1e-4", epochs=100),
    "afew": dict(lr=1e-4, schedule="30:8e-6,60:1e-7", epochs=100),
    "synthetic": dict(lr=1e-3, schedule="20:1e-4", epochs=30),
}
PREPARE = {
    "ckplus": """CK+ is licensed: request it at https://www.jeffcohn.net/Resources/ , unpack it so
that {raw}/cohn-kanade-images/S005/001/*.png and {raw}/Emotion/S005/001/*_emotion.txt exist, then:
    ./reencode.sh {raw} {root}
    python datasets.py --dataset ckplus --root {root}""",
    "mmi": """MMI is licensed: request it at https://mmifacedb.eu/ , unpack the Sessions/ folders
into {raw}/Sessions/<n>/ (session.xml, <sid>.avi, <sid>.xml), then:
    ./reencode.sh {raw} {root}
    python datasets.py --dataset mmi --root {root}""",
    "afew": """AFEW 7.0 comes with the EmotiW challenge (https://sites.google.com/site/emotiwchallenge/).
Put Train_AFEW/<Emotion>/*.avi and Val_AFEW/<Emotion>/*.avi under {raw}, then crop the faces,
re-encode and index:
    python datasets.py crop --in {raw} --out {raw}-faces
    ./reencode.sh {raw}-faces {root}
    python datasets.py --dataset afew --root {root}""",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", required=True, choices=["ckplus", "mmi", "afew", "synthetic"])
    p.add_argument("--root", help="indexed data folder (default: data/<dataset>)")
    p.add_argument("--fold", action="append",
                   help="test fold(s) of the protocol (repeatable; default: all): 0..9 for "
                        "CK+/MMI/synthetic (datasets.PROTOCOLS)")
    p.add_argument("--out", default="runs/mic", help="run folder; the variant is a subfolder")
    p.add_argument("--name", help="variant name (default: derived from the options)")
    # objective
    p.add_argument("--alpha", type=float, default=0.1, help="weight of the MI term (or adversary)")
    p.add_argument("--beta", type=float, default=0.1, help="weight of the reconstruction term")
    p.add_argument("--estimator", default="mine", choices=sorted(ESTIMATORS))
    p.add_argument("--t-steps", type=int,
                   help="T_θ updates per encoder update (default: 1 for CLUB, 10 for the lower "
                        "bounds: benchmarks/mi_game.py shows a lagging T_θ fooled with fewer)")
    p.add_argument("--mi-hidden", type=int, default=512, help="width of T_θ")
    p.add_argument("--no-mi", action="store_true", help="MIC−MI: no MI term in the loss")
    p.add_argument("--adv", action="store_true", help="identity adversary behind gradient reversal")
    p.add_argument("--no-rec", action="store_true", help="MIC−Î: no reconstruction term")
    p.add_argument("--with-mv", action="store_true", help="MIC+T^t: add a motion-vector branch")
    p.add_argument("--accumulate", action="store_true",
                   help="residuals and vectors against the I-frame (pytorch-coviar's default) "
                        "instead of the previous frame (the paper's Δ^t)")
    p.add_argument("--input", default="residual", choices=["residual", "rgb"],
                   help="rgb: the same model on decoded frames (the RGB baseline)")
    # model
    p.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet18", "resnet6"])
    p.add_argument("--backbone-weights", help="ImageNet state dict for resnet50/resnet18")
    p.add_argument("--hidden", type=int, default=512, help="LSTM size")
    p.add_argument("--identity", default="facenet_mobilenet",
                   choices=["facenet_mobilenet", "inception_resnet_v1"])
    p.add_argument("--identity-weights", help="facenet_mobilenet.pth or the VGGFace2 file")
    p.add_argument("--identity-size", type=int,
                   help="letterboxed input side of f_I (160: the published weights; default "
                        "80 for the synthetic set's own pretraining)")
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
    if args.t_steps is None:
        args.t_steps = 1 if args.estimator == "club" else 10
    if args.identity_size is None:  # our own pretraining on 128-px synthetic faces: 80 px
        pretrain = args.dataset == "synthetic" and not args.identity_weights
        args.identity_size = 80 if pretrain else 160
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.root = Path(args.root or f"data/{args.dataset}")
    args.name = args.name or variant_name(args)
    return args


def variant_name(args: argparse.Namespace) -> str:
    """The row of the paper's table this configuration is: mic, mic-mi, mic-mi+adv, mic+mv, ..."""
    name = "rgb" if args.input == "rgb" else "mic"
    name += "-mi" if args.no_mi else ""
    name += "+adv" if args.adv else ""
    name += "-rec" if args.no_rec else ""
    name += "+mv" if args.with_mv else ""
    return name + ("" if args.backbone == "resnet50" else f"+{args.backbone}")


def lr_at(epoch: int, lr: float, schedule: str) -> float:
    """Learning rate of `epoch` under a step schedule 'e1:lr1,e2:lr2' (lr until e1, ...)."""
    for step in sorted((s.split(":") for s in schedule.split(",") if s), key=lambda s: int(s[0])):
        if epoch >= int(step[0]):
            lr = float(step[1])
    return lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (global state of libraries that use it)
    torch.manual_seed(seed)


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then rename: a killed run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def log0(*msg: object) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        tqdm.write(" ".join(str(m) for m in msg))


# ----------------------------------------------------------------------------------------------
# Data: locate it, or generate the synthetic set as a user would (synthetic.py → reencode.sh →
# datasets.py), and pretrain the identity network on the synthetic set's disjoint identities.
# ----------------------------------------------------------------------------------------------


def prepare_data(args: argparse.Namespace) -> None:
    """Make sure args.root holds an index.csv, generating the synthetic set when asked."""
    if (args.root / "index.csv").exists():
        return
    raw = args.root.with_name(args.root.name + "-raw")
    if args.dataset != "synthetic":
        has_mp4 = args.root.is_dir() and any(args.root.rglob("*.mp4"))
        what = (f"{args.root} holds videos but no index.csv: run\n"
                f"    python datasets.py --dataset {args.dataset} --root {args.root}"
                if has_mp4 else PREPARE[args.dataset].format(raw=raw, root=args.root))
        sys.exit(f"train.py: no {args.dataset} data in {args.root}.\n{what}")
    py = sys.executable
    if not (raw / "synthetic.json").exists():
        run([py, str(ROOT / "synthetic.py"), "--out", str(raw),
             "--subjects", str(args.synthetic_subjects), "--seed", str(args.seed),
             "--jobs", str(os.cpu_count() or 1)])
    run(["bash", str(ROOT / "reencode.sh"), str(raw), str(args.root)])
    run([py, str(ROOT / "datasets.py"), "--dataset", "synthetic", "--root", str(args.root)])


def run(cmd: list[str]) -> None:
    log0("$", " ".join(cmd))
    subprocess.run(cmd, check=True)


def identity_weights(args: argparse.Namespace, device: torch.device) -> str | None:
    """The identity network's weights: given, or (synthetic set) pretrained here and cached."""
    if args.identity_weights or args.dataset != "synthetic":
        return args.identity_weights
    if args.identity != "facenet_mobilenet":
        sys.exit("train.py: pretraining on the synthetic identities needs --identity "
                 "facenet_mobilenet (or pass --identity-weights)")
    path = args.root / f"identity_facenet_mobilenet_{args.identity_size}px.pth"
    if not path.exists():
        raw = args.root.with_name(args.root.name + "-raw") / "identities"
        acc = pretrain_identity(raw, path, args.pretrain_epochs, args.identity_size, args.seed,
                                device)
        log0(f"identity network: {acc:.1%} identity accuracy on held-out frames -> {path}")
    return str(path)


def pretrain_identity(folder: Path, out: Path, epochs: int, size: int, seed: int,
                      device: torch.device) -> float:
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
    save_atomic(net.state_dict(), out)
    return float((pred == y[test]).float().mean())


@torch.no_grad()
def identity_features(ds: ClipDataset, f_i: torch.nn.Module, device: torch.device,
                      workers: int) -> torch.Tensor:
    """z_I of every clip of `ds` (frozen f_I on its I-frame), computed once."""
    loader = DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=collate)
    return torch.cat([f_i(b["iframe"].to(device)).cpu()
                      for b in tqdm(loader, desc="identity features z_I", leave=False)])


# ----------------------------------------------------------------------------------------------
# One fold: train, checkpoint each epoch, evaluate on the held-out subjects.
# ----------------------------------------------------------------------------------------------


def build(args: argparse.Namespace, ds: ClipDataset, d_i: int, device: torch.device
          ) -> tuple[MIC, torch.nn.Module, torch.optim.Optimizer, torch.optim.Optimizer]:
    """The model, the MI estimator T_θ and their optimisers (Adam, β1 0.9)."""
    seed_everything(args.seed)
    model = MIC(ds.num_classes, args.num_segments, args.backbone, args.hidden,
                with_mv=args.with_mv, decoder=not args.no_rec, d_i=d_i, size=args.size,
                num_subjects=len(ds.subjects) if args.adv else 0,
                backbone_weights=args.backbone_weights).to(device)
    estimator = build_estimator(args.estimator, model.d_e, d_i, hidden=args.mi_hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999),
                           weight_decay=args.weight_decay)
    opt_t = torch.optim.Adam(estimator.parameters(), lr=args.lr)
    return model, estimator, opt, opt_t


def make_datasets(args: argparse.Namespace, split: Split) -> tuple[ClipDataset, ...]:
    """(train, train in test mode, test) datasets of one split of the protocol."""
    cache = (DecodeCache(args.cache, short_side=math.ceil(args.size / min(SCALES)))
             if args.cache else None)
    common = dict(num_segments=args.num_segments, size=args.size, representation=args.input,
                  with_mv=args.with_mv, accumulate=args.accumulate, cache=cache)
    return (ClipDataset(args.root, folds=split.train, train=True, apex=not args.no_rec, **common),
            ClipDataset(args.root, folds=split.train, apex=False, **common),
            ClipDataset(args.root, folds=split.test, apex=False, **common))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


@torch.no_grad()
def predict(model: MIC, ds: ClipDataset, args: argparse.Namespace,
            device: torch.device) -> dict[str, np.ndarray]:
    """Logits, predictions and z_E of every clip of `ds` (test-mode sampling)."""
    model.eval()
    loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate)
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
    return {"logits": logits_t.numpy(), "pred": logits_t.argmax(1).numpy(),
            "z_e": torch.cat(z_e).numpy(), "label": torch.cat(labels).numpy(),
            "subject": torch.cat(subjects).numpy()}


def autocast(device: torch.device):
    """Mixed precision (bfloat16) on CUDA; full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_fold(args: argparse.Namespace, split: Split, device: torch.device,
               z_i_all: torch.Tensor, z_i_row: dict[str, int]) -> dict:
    fold = split.name
    fold_dir = args.out / args.name / split.name
    result_path = fold_dir / "result.json"
    ckpt_path = fold_dir / "ckpt.pt"
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if result_path.exists() and args.resume:
        log0(f"{fold_dir}: already finished")
        return json.loads(result_path.read_text())
    if ckpt_path.exists() and not args.resume:
        sys.exit(f"train.py: {fold_dir} holds a run: pass --resume to continue it, "
                 "or choose another --out/--name")
    fold_dir.mkdir(parents=True, exist_ok=True)
    train_ds, train_eval_ds, test_ds = make_datasets(args, split)
    # z_I of the training clips, in the dataset's order (precomputed once for every clip)
    z_i_train = z_i_all[[z_i_row[r["path"]] for r in train_ds.rows]].to(device)

    d_i = z_i_all.shape[1]
    model, estimator, opt, opt_t = build(args, train_ds, d_i, device)
    start, history = 0, []
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        estimator.load_state_dict(ckpt["estimator"])
        opt.load_state_dict(ckpt["opt"])
        opt_t.load_state_dict(ckpt["opt_t"])
        start, history = ckpt["epoch"] + 1, json.loads(ckpt["history"])
        log0(f"{fold_dir}: resuming at epoch {start}")
    step_fn: torch.nn.Module = TrainForward(model)
    if dist.is_initialized():
        step_fn = DistributedDataParallel(step_fn, find_unused_parameters=True)
    writer = SummaryWriter(str(fold_dir / "tb"), purge_step=start) if rank0 else None

    for epoch in range(start, args.epochs):
        lr = lr_at(epoch, args.lr, args.schedule)
        for group in (*opt.param_groups, *opt_t.param_groups):
            group["lr"] = lr
        seed_everything(args.seed * 1000 + epoch)  # resumable: each epoch's randomness is fixed
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        sampler = (DistributedSampler(train_ds, seed=args.seed * 1000 + epoch, drop_last=True)
                   if dist.is_initialized() else None)
        loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=sampler is None,
                            sampler=sampler, num_workers=args.workers, collate_fn=collate,
                            drop_last=True, generator=gen, pin_memory=device.type == "cuda")
        step_fn.train()
        sums: dict[str, float] = {}
        steps = 0
        bar = tqdm(loader, desc=f"{args.name} fold {fold} epoch {epoch + 1}/{args.epochs}",
                   leave=False, disable=not rank0)
        for batch in bar:
            b = to_device(batch, device)
            terms = train_step(step_fn, estimator, opt, opt_t, b, z_i_train[b["index"]], args,
                               device)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
            bar.set_postfix(loss=f"{terms['loss']:.3f}", mi=f"{terms['mi']:.3f}")
            if args.max_steps and steps >= args.max_steps:
                break
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        history.append({"epoch": epoch, "lr": lr, **means})
        if rank0:
            for k, v in means.items():
                writer.add_scalar(f"train/{k}", v, epoch)
            writer.add_scalar("train/lr", lr, epoch)
            save_atomic({"model": model.state_dict(), "estimator": estimator.state_dict(),
                         "opt": opt.state_dict(), "opt_t": opt_t.state_dict(), "epoch": epoch,
                         "history": json.dumps(history), "config": json.dumps(model_config(
                             args, train_ds, d_i))}, ckpt_path)
            log0(f"{args.name} fold {fold} epoch {epoch + 1}: "
                 + " ".join(f"{k} {v:.4f}" for k, v in means.items()))

    result = {}
    if rank0:
        test = predict(model, test_ds, args, device)
        train_eval = predict(model, train_eval_ds, args, device)
        acc = float((test["pred"] == test["label"]).mean())
        writer.add_scalar("test/acc", acc, args.epochs)
        writer.close()
        np.savez_compressed(fold_dir / "features.npz", train_z=train_eval["z_e"],
                            train_subject=train_eval["subject"], train_label=train_eval["label"],
                            test_z=test["z_e"], test_subject=test["subject"],
                            test_label=test["label"], test_pred=test["pred"],
                            test_logits=test["logits"],
                            test_path=np.array([r["path"] for r in test_ds.rows]))
        result = {"fold": fold, "accuracy": acc, "num_test": len(test_ds),
                  "num_train": len(train_ds), "classes": train_ds.class_names,
                  "variant": args.name, "history": history}
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, result_path)
        log0(f"{args.name} fold {fold}: test accuracy {acc:.2%} ({len(test_ds)} clips)")
    if dist.is_initialized():
        dist.barrier()
    return result


def train_step(step_fn: torch.nn.Module, estimator: torch.nn.Module, opt: torch.optim.Optimizer,
               opt_t: torch.optim.Optimizer, b: dict, z_i: torch.Tensor,
               args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """One step: T_θ `t_steps` times on the MI bound, then f_E on L_CE + α·MI + β·L_rec."""
    use_rec = not args.no_rec
    with autocast(device):
        out = step_fn(b["input"], b.get("mv"), z_i, use_rec)
    z_e = out["z_e"].float()
    ce = F.cross_entropy(out["logits"].float(), b["label"])
    # T_θ: tighten the MI bound on the current features (no gradient into f_E).
    for _ in range(args.t_steps):
        opt_t.zero_grad(set_to_none=True)
        estimator.loss_T(z_e.detach(), z_i).backward()
        if dist.is_initialized():  # T_θ is small: average its gradients by hand
            for p in estimator.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
        opt_t.step()
    mi = estimator(z_e, z_i)  # MI estimate between z_E and z_I
    loss = ce + (0.0 if args.no_mi else args.alpha) * mi
    terms = {"ce": ce.item(), "mi": mi.item()}
    if "adv" in out:  # MIC−MI+Adv: the discriminator sits behind gradient reversal
        adv = F.cross_entropy(out["adv"].float(), b["subject"])
        loss = loss + args.alpha * adv
        terms["adv"] = adv.item()
    if use_rec and b["has_apex"].any():  # L_rec = ||I_apex − Dec(z_I, z_E)||²
        rec = F.mse_loss(out["rec"].float()[b["has_apex"]], b["apex"][b["has_apex"]])
        loss = loss + args.beta * rec
        terms["rec"] = rec.item()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    terms["loss"] = loss.item()
    terms["acc"] = (out["logits"].argmax(1) == b["label"]).float().mean().item()
    return terms


class TrainForward(torch.nn.Module):
    """Everything of MIC a training step runs, in one forward (so that DDP sees it all)."""

    def __init__(self, model: MIC) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mv: torch.Tensor | None, z_i: torch.Tensor,
                rec: bool) -> dict[str, torch.Tensor]:
        out = self.model(x, mv)
        if rec:
            out["rec"] = self.model.reconstruct(z_i, out["z_e"])
        if self.model.discriminator is not None:
            out["adv"] = self.model.discriminator(out["z_e"])
        return out


def model_config(args: argparse.Namespace, ds: ClipDataset, d_i: int) -> dict:
    """What predict.py and evaluate.py need to rebuild the model of a checkpoint."""
    return {"num_classes": ds.num_classes, "class_names": ds.class_names,
            "num_segments": args.num_segments, "backbone": args.backbone, "hidden": args.hidden,
            "with_mv": args.with_mv, "decoder": not args.no_rec, "d_i": d_i, "size": args.size,
            "input": args.input, "accumulate": args.accumulate, "dataset": args.dataset,
            "variant": args.name,
            "root": str(args.root)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out = Path(args.out)
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
    if rank0:
        prepare_data(args)
        weights = identity_weights(args, device)
    if distributed:
        dist.barrier()
        weights = identity_weights(args, device)  # the cached file rank 0 made
    f_i = build_identity(args.identity, weights, size=args.identity_size).to(device)
    everything = ClipDataset(args.root, num_segments=1, size=args.size, apex=False, iframe=True,
                             iframe_size=args.identity_size)
    z_i_all = identity_features(everything, f_i, device, args.workers)
    del f_i
    splits = [s for s in PROTOCOLS[args.dataset] if args.fold is None or s.test[0] in args.fold]
    t0 = time.time()
    z_i_row = {r["path"]: i for i, r in enumerate(everything.rows)}
    results = [train_fold(args, s, device, z_i_all, z_i_row) for s in splits]
    if rank0:
        accs = [r["accuracy"] for r in results]
        log0(f"{args.name}: accuracy {np.mean(accs):.2%} ± {np.std(accs):.2%} over "
             f"{len(accs)} fold(s) in {time.time() - t0:.0f} s -> {args.out / args.name}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
