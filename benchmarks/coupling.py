"""Does z_I predict a person's style? R² of a linear probe on held-out identities, per coupling.

For each coupling c (``synthetic.py --coupling``), draws ``--subjects`` expression subjects of
the synthetic set, renders only the neutral first frame of each (the I-frame, exactly as
`synthetic.generate` writes it), computes z_I with a frozen identity network and fits a ridge
probe z_I → each style parameter (gain, asymmetry, onset curve, lead/reach, signature units,
blink, nod, tic, contempt side; ``protos``: the person's version of each emotion, flattened)
on some subjects, scored on the others (5-fold over subjects, R² of the pooled held-out
predictions; the ridge penalty chosen by leave-one-out on the training subjects). The same
probe from the true appearance attributes (`synthetic.appearance`, the coupling's input) shows
what a perfect face network could reach.

The identity network is what `train.py --dataset synthetic` uses by default, FaceNet
(Inception-ResNet-v1, CASIA-WebFace) converted from the pip package, or ``--identity-weights
pretrain``: FaceNet-MobileNet pretrained on the synthetic set's disjoint identities (cached under
``--work``), or any other ``--identity-weights`` with ``--identity`` and ``--identity-size``.

    .venv/bin/python benchmarks/coupling.py [--subjects 300] [--couplings 0 0.5 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import synthetic  # noqa: E402
from models import DEFAULT_IDENTITY, build_identity  # noqa: E402
from train import pretrain_identity  # noqa: E402


def ridge_r2(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated R² of ridge x → y (rows = subjects): k-fold over rows, penalty by
    leave-one-out within each training part, R² = 1 − SSE/SST over all held-out predictions
    and all non-constant outputs of y."""
    y = y[:, y.std(0) > 1e-12]
    if y.shape[1] == 0:
        return float("nan")
    order = np.random.default_rng(seed).permutation(len(x))
    pred = np.zeros_like(y)
    for test in np.array_split(order, folds):
        train = np.setdiff1d(order, test)
        sd = x[train].std(0)
        live = sd > 1e-6 * sd.max()  # a feature constant on the training rows says nothing
        mu, sd = x[train][:, live].mean(0), sd[live]
        xt, xs = (x[train][:, live] - mu) / sd, (x[test][:, live] - mu) / sd
        ym = y[train].mean(0)
        yt = y[train] - ym
        s, u = np.linalg.eigh(xt @ xt.T)  # dual form: n_train × n_train
        s = np.clip(s, 0, None)
        best, best_lam = np.inf, 1.0
        for lam in s.mean() * np.logspace(-4, 3, 15):
            shrink = s / (s + lam)
            fit = u @ (shrink[:, None] * (u.T @ yt))
            h = 1 / len(train) + (u**2) @ shrink  # leverage, the intercept included
            loo = ((yt - fit) / np.maximum(1 - h, 1e-9)[:, None]) ** 2
            if loo.sum() < best:
                best, best_lam = loo.sum(), lam
        alpha = u @ ((u.T @ yt) / (s + best_lam)[:, None])
        pred[test] = xs @ xt.T @ alpha + ym
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def identity_network(args: argparse.Namespace) -> tuple[str, str]:
    """f_I's weights (a name or path; 'pretrain': pretrained here on the synthetic identities),
    and a line saying what it is."""
    if args.identity_weights != "pretrain":
        return args.identity_weights, f"{args.identity} with weights {args.identity_weights}"
    path = args.work / f"identity_facenet_mobilenet_{args.identity_size}px.pth"
    if path.exists():
        return str(path), f"facenet_mobilenet pretrained on the synthetic identities ({path})"
    raw = args.work / "identity-raw"
    if not (raw / "synthetic.json").exists():
        synthetic.generate(
            raw,
            synthetic.SyntheticConfig(subjects=1, unlabelled=0, seed=args.seed),
            jobs=1,
            force=True,
        )
    acc = pretrain_identity(
        raw / "identities",
        path,
        args.pretrain_epochs,
        args.identity_size,
        args.seed,
        torch.device("cpu"),
    )
    return str(path), (
        f"facenet_mobilenet pretrained on the synthetic identities, {acc:.1%} "
        f"identity accuracy on held-out frames ({path})"
    )


def measure(c: float, args: argparse.Namespace, f_i: torch.nn.Module) -> dict[str, tuple]:
    """R² (z_I, appearance attributes) → each style parameter at coupling c."""
    cfg = synthetic.SyntheticConfig(subjects=args.subjects, coupling=c, seed=args.seed)
    plan = synthetic.label_plan(cfg) or [None] * cfg.subjects
    people, frames = [], []
    for i in range(cfg.subjects):
        ident, img = synthetic.neutral_frame(cfg, i, emotions=plan[i])
        people.append(ident)
        frames.append(np.asarray(img))
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # uint8 RGB
    with torch.no_grad():
        z_i = torch.cat([f_i(b) for b in x.split(64)]).numpy()
    attrs = np.stack([synthetic.appearance(p) for p in people])
    styles = [synthetic.style_params(p) for p in people]
    out = {}
    for name in styles[0]:
        y = np.stack([s[name] for s in styles])
        out[name] = (ridge_r2(z_i, y, seed=args.seed), ridge_r2(attrs, y, seed=args.seed))
    return out


def plot(table: dict[float, dict[str, tuple]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(table)
    for k, (c, rows) in enumerate(table.items()):
        ax.bar(
            np.arange(len(names)) + (k - (len(table) - 1) / 2) * width,
            [max(rows[n][0], -0.1) for n in names],
            width,
            label=f"c = {c:g}",
        )
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("held-out R², z_I → style")
    ax.set_ylim(-0.1, 1)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=300, help="identities per coupling")
    p.add_argument("--couplings", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--identity",
        choices=["facenet_mobilenet", "inception_resnet_v1"],
        help="f_I (default: the one its weights are for)",
    )
    p.add_argument(
        "--identity-weights",
        default=DEFAULT_IDENTITY[1],
        help="f_I's weights: a name, a path, or 'pretrain' (FaceNet-MobileNet "
        f"pretrained on the synthetic identities, cached in --work); default "
        f"{DEFAULT_IDENTITY[1]}",
    )
    p.add_argument(
        "--identity-size",
        type=int,
        help="letterboxed input side of f_I (default: 160, 80 for 'pretrain')",
    )
    p.add_argument("--pretrain-epochs", type=int, default=5)
    p.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs" / "coupling",
        help="cache folder (identity set and network)",
    )
    p.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "results" / "coupling.png")
    args = p.parse_args(argv)
    pretrain = args.identity_weights == "pretrain"
    if args.identity is None:
        args.identity = "facenet_mobilenet" if pretrain else DEFAULT_IDENTITY[0]
    if args.identity_size is None:
        args.identity_size = 80 if pretrain else 160
    t0 = time.time()
    weights, what = identity_network(args)
    f_i = build_identity(args.identity, weights, size=args.identity_size)
    table = {c: measure(c, args, f_i) for c in args.couplings}
    print(f"f_I: {what}")
    print(
        f"{args.subjects} subjects per coupling, 5-fold over subjects; R² of ridge z_I → "
        "style parameter (in brackets: from the true appearance attributes)\n"
    )
    print("| style parameter | " + " | ".join(f"c = {c:g}" for c in table) + " |")
    print("|---|" + "---|" * len(table))
    for name in next(iter(table.values())):
        print(
            f"| {name} | "
            + " | ".join(f"{rows[name][0]:.2f} ({rows[name][1]:.2f})" for rows in table.values())
            + " |"
        )
    plot(table, args.png)
    print(f"\n{args.png} written; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
