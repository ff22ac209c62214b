"""How much identity z_I carries on the synthetic faces: FaceNet (CASIA-WebFace, converted from
the pip package, 160 px) against the FaceNet-MobileNet that train.py pretrains on the synthetic
set's identities (80 px, `train.pretrain_identity`).

The identity set (`identities/P###/*.png`, written by synthetic.py) is split by identity: the
MobileNet is pretrained on the first `--pretrain` identities, as train.py does on a whole set,
and both networks are measured on the others, which neither has seen (as train.py's z_I are
computed on the expression subjects, never on the pretraining identities). Measures, on the
unseen identities: the project's linear identity probe (`evaluate.identity_probe`: fit on every
other image of each identity, test on the rest) and nearest centroid (cosine, same split).

With `--preprocessing`, it only compares the input standardisations the FaceNet could expect
(fixed (x − 127.5)/128, per-image prewhitening, none) on real faces: scikit-image's 100 LFW
faces (25 px, grey), each against its mirror image (same person) and the 99 others.

    python synthetic.py --out data/synthetic-ids --subjects 4 --id-subjects 80
    python benchmarks/identity_accuracy.py --data data/synthetic-ids   # ~20 min on 2 busy cores
    python benchmarks/identity_accuracy.py --preprocessing             # ~1 min of CPU time
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluate import identity_probe  # noqa: E402
from models import DEFAULT_IDENTITY, IdentityBranch, build_identity, letterbox  # noqa: E402
from train import pretrain_identity  # noqa: E402


def load_identities(folders: list[Path]) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 images (N, 3, H, W) of every folder/*.png and their identity index."""
    images, labels = [], []
    for k, d in enumerate(folders):
        for f in sorted(d.glob("*.png")):
            images.append(np.asarray(Image.open(f).convert("RGB")))
            labels.append(k)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), np.array(labels)


@torch.no_grad()
def embed(branch: IdentityBranch, images: torch.Tensor, device: torch.device) -> np.ndarray:
    branch.to(device)
    return torch.cat([branch(b.to(device)).cpu() for b in images.split(32)]).numpy()


def nearest_centroid(z: np.ndarray, labels: np.ndarray) -> float:
    """Cosine nearest centroid: centroids from each identity's even-ranked images, tested on
    its odd-ranked ones (`identity_probe`'s split: images are sorted by identity here)."""
    x = F.normalize(torch.from_numpy(z).float(), dim=1)
    y = torch.from_numpy(labels)
    rank = torch.cat([torch.arange(int((y == k).sum())) for k in y.unique()])
    fit, test = rank % 2 == 0, rank % 2 == 1
    centroids = F.normalize(torch.stack([x[fit & (y == k)].mean(0) for k in y.unique()]), dim=1)
    pred = y.unique()[(x[test] @ centroids.T).argmax(1)]
    return float((pred == y[test]).float().mean())


STANDARDISATIONS = {
    "fixed (x − 127.5) / 128 (ours)": lambda x: (x - 127.5) / 128,
    "per-image prewhitening": lambda x: (
        (x - x.mean((1, 2, 3), keepdim=True))
        / x.std((1, 2, 3), keepdim=True, unbiased=False).clamp_min(1 / x[0].numel() ** 0.5)
    ),
    "none (0..255)": lambda x: x,
}


@torch.no_grad()
def preprocessing_check() -> None:
    """Mirror pairs against other faces on scikit-image's LFW faces, per standardisation."""
    faces = torch.from_numpy(skimage.data.lfw_subset()[:100]).float()  # the 100 faces
    x = letterbox(faces[:, None].expand(-1, 3, -1, -1).contiguous()) * 255  # 0..255, 160 px
    net = build_identity(*DEFAULT_IDENTITY).net
    print("| input standardisation | mirror pair distance | other faces | ratio | AUC |")
    print("|---|---|---|---|---|")
    for name, standardise in STANDARDISATIONS.items():
        z, z_mirror = net(standardise(x)), net(standardise(x.flip(3)))
        same = (z - z_mirror).norm(dim=1)
        other = torch.cdist(z, z)[~torch.eye(len(z), dtype=torch.bool)]
        auc = (same[:, None] < other[None, :]).float().mean()
        print(
            f"| {name} | {same.mean():.3f} | {other.mean():.3f} | "
            f"{other.mean() / same.mean():.2f} | {auc:.4f} |"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data", type=Path, help="a synthetic.py --out folder (or its identities/ folder)"
    )
    p.add_argument(
        "--preprocessing",
        action="store_true",
        help="only compare input standardisations on real faces",
    )
    p.add_argument(
        "--pretrain",
        type=int,
        default=40,
        help="identities the MobileNet is pretrained on (train.py's demo set has 40); "
        "the rest are measured",
    )
    p.add_argument("--pretrain-epochs", type=int, default=6, help="as train.py's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.preprocessing:
        return preprocessing_check()
    if args.data is None:
        p.error("--data is required (or --preprocessing)")
    root = args.data / "identities" if (args.data / "identities").is_dir() else args.data
    ids = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if len(ids) <= args.pretrain + 1:
        sys.exit(
            f"identity_accuracy.py: {root} has {len(ids)} identities; need more than "
            f"--pretrain {args.pretrain} + 1 (python synthetic.py --id-subjects 80)"
        )
    seen, unseen = ids[: args.pretrain], ids[args.pretrain :]
    device = torch.device(args.device)
    images, labels = load_identities(unseen)
    print(
        f"{root}: pretraining on {len(seen)} identities, measuring on {len(unseen)} unseen "
        f"identities ({len(labels)} images, {images.shape[-1]} px)"
    )

    rows = []
    t0 = time.perf_counter()
    facenet = build_identity(*DEFAULT_IDENTITY)
    z = embed(facenet, images, device)
    rows.append(
        (
            f"FaceNet {DEFAULT_IDENTITY[1]} (160 px, z_I {facenet.dim}-d)",
            z,
            time.perf_counter() - t0,
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "seen"
        folder.mkdir()
        for d in seen:
            (folder / d.name).symlink_to(d.resolve())
        t0 = time.perf_counter()
        out = Path(tmp) / "identity_facenet_mobilenet_80px.pth"
        acc = pretrain_identity(folder, out, args.pretrain_epochs, 80, args.seed, device)
        mobilenet = build_identity("facenet_mobilenet", str(out), size=80)
        z = embed(mobilenet, images, device)
        rows.append(
            (
                f"FaceNet-MobileNet pretrained here (80 px, z_I {mobilenet.dim}-d)",
                z,
                time.perf_counter() - t0,
            )
        )

    print("\n| network | linear probe | nearest centroid | time |\n|---|---|---|---|")
    for name, z, seconds in rows:
        probe, chance = identity_probe(z, labels, seed=args.seed)
        print(f"| {name} | {probe:.1%} | {nearest_centroid(z, labels):.1%} | {seconds:.0f} s |")
    print(
        f"\nchance {chance:.1%} ({len(unseen)} unseen identities); the MobileNet's own "
        f"classifier on held-out images of its {len(seen)} pretraining identities: {acc:.1%}"
    )


if __name__ == "__main__":
    main()
