"""The MI minimisation game of MIC, on a toy whose true MI is known in closed form.

Latents: an expression c ~ N(0, 1) and an identity v ~ N(0, I_k). Observation
x = A [c; v] + σ_x n ∈ R^{d_x}; identity feature z_I = y = B v + σ_y ε ∈ R^{d_y}. A linear encoder
z_E = W x ∈ R^{d_z} is trained on the task term ``MSE(head(z_E), c)`` plus ``alpha · MI term``,
the MI term computed exactly as train.py computes it (``train.mi_estimate``, ``mi.mi_penalty``)
under one of its procedures (``--mi-procedure``): ``table`` (the default: CLUB with a ridge q
fitted on every clip's latest z_E against its z_I), ``memory`` (the previous default: MINE's T_θ
on recent batches of half the clips, the MI term on the others, floored at 0) or ``paper`` (T_θ
on the batch it scores). The data are a fixed pool of clips that recur every epoch, as a training
set does, each clip its own subject. (z_E, y) is jointly Gaussian, so the population MI

    I(z_E; y) = ½ [log det Σ_yy − log det(Σ_yy − Σ_yz Σ_zz⁺ Σ_zy)]

is exact at every step. An encoder orthogonal to A's identity columns keeps c and has I = 0, so the
game can be won; an encoder can also fool a lagging T_θ (the estimate reads ~0 while the true MI
stays high), and T_θ can memorise recurring pairs (``--independent`` zeroes A's identity columns,
so the true MI is 0 throughout). ``placebo`` rows permute z_I across the clips (train.py's
--mi-placebo). At the end a fresh estimator is trained on one population sample and evaluated on
another (``mi.heldout_mi``). After the task alone, two closed-form rows say what the pool can show
(``pool_references``): a procedure that learns from the pool's clips cannot be expected below
"the pool's identity directions removed".

    python benchmarks/mi_game.py --preset demo       # demo's dimensions (the default)
    python benchmarks/mi_game.py --preset paper      # the paper's dimensions
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mi  # noqa: E402
import train  # noqa: E402

# d_z: z_E (the demo: 4 segments × LSTM 64; the paper's: 2048), d_y: z_I (FaceNet CASIA 512,
# FaceNet-MobileNet 1024), batch, width of T_θ, a pool the size of a CK+-like training fold.
# x has more dimensions than z_E (the encoder can drop the identity directions); identity sits
# in a few of them (identity rows, scale: about 2 nats at the start).
PRESETS = {
    "demo": dict(
        dx=320,
        dz=256,
        k=8,
        dy=512,
        batch_size=16,
        hidden=512,
        pool=176,
        identity_scale=0.07,
        identity_rows=16,
    ),
    "paper": dict(
        dx=2304,
        dz=2048,
        k=8,
        dy=1024,
        batch_size=48,
        hidden=1024,
        pool=290,
        identity_scale=0.075,
        identity_rows=16,
    ),
}


@dataclass
class Toy:
    """x = A [c; v] + σ_x n, y = B v + σ_y ε (covariances in float64)."""

    A: np.ndarray  # (d_x, 1 + k)
    B: np.ndarray  # (d_y, k)
    sigma_x: float
    sigma_y: float

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (n, d_x), c (n, 1), y (n, d_y)."""
        a = torch.as_tensor(self.A, dtype=torch.float32)
        b = torch.as_tensor(self.B, dtype=torch.float32)
        latent = torch.randn(n, a.shape[1], generator=g)
        x = latent @ a.T + self.sigma_x * torch.randn(n, a.shape[0], generator=g)
        y = latent[:, 1:] @ b.T + self.sigma_y * torch.randn(n, b.shape[0], generator=g)
        return x, latent[:, :1], y

    def true_mi(self, W: np.ndarray) -> float:
        """I(Wx; y) in nats, exact."""
        s_xx = self.A @ self.A.T + self.sigma_x**2 * np.eye(self.A.shape[0])
        s_zz = W @ s_xx @ W.T
        s_zy = W @ self.A[:, 1:] @ self.B.T
        s_yy = self.B @ self.B.T + self.sigma_y**2 * np.eye(self.B.shape[0])
        s_cond = s_yy - s_zy.T @ np.linalg.pinv(s_zz, hermitian=True) @ s_zy
        return 0.5 * (np.linalg.slogdet(s_yy)[1] - np.linalg.slogdet(s_cond)[1])

    def best_task_mse(self) -> float:
        """MSE of E[c | x], the floor of the task term."""
        s_xx = self.A @ self.A.T + self.sigma_x**2 * np.eye(self.A.shape[0])
        s_xc = self.A[:, :1]
        return 1.0 - (s_xc.T @ np.linalg.solve(s_xx, s_xc)).item()


# The rows: train.py's MI options of each procedure (the rest are train.py's defaults).
PROCEDURES = {
    "table": [],  # the default
    "table placebo": ["--mi-placebo"],
    "memory": [
        "--mi-procedure",
        "memory",
        "--estimator",
        "mine",
        "--mi-critic",
        "mlp",
        "--mi-hidden",
        "{hidden}",
        "--mi-weight-decay",
        "0",
    ],
    "paper": [
        "--mi-procedure",
        "paper",
        "--estimator",
        "mine",
        "--mi-critic",
        "mlp",
        "--mi-hidden",
        "{hidden}",
        "--mi-weight-decay",
        "0",
    ],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="dimensions, batch, T_θ width and pool (the options below override)",
    )
    p.add_argument(
        "--procedures",
        default=",".join(PROCEDURES),
        help=f"comma-separated rows among {', '.join(PROCEDURES)} ('': the task alone and the "
        "pool's references only)",
    )
    p.add_argument("--steps", type=int, default=2000, help="encoder steps")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the MI term")
    p.add_argument(
        "--train-options",
        default="",
        help="more train.py options for every row, one string (e.g. '--mi-ridge 10')",
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument("--hidden", type=int, help="width of T_θ of the memory and paper rows")
    p.add_argument("--lr-encoder", type=float, default=1e-3)
    p.add_argument("--dx", type=int, help="dimension of x")
    p.add_argument("--dz", type=int, help="dimension of z_E")
    p.add_argument("--k", type=int, help="dimension of the identity v")
    p.add_argument("--dy", type=int, help="dimension of z_I = y")
    p.add_argument("--pool", type=int, help="clips that recur every epoch")
    p.add_argument("--identity-scale", type=float, help="scale of the identity in x")
    p.add_argument("--identity-rows", type=int, help="dimensions of x that carry identity")
    p.add_argument(
        "--init",
        choices=["random", "span"],
        default="random",
        help="the encoder's start: random, or random projected onto the span of the "
        "pool's x (the part of z_E along directions of x no clip of the pool varies in "
        "is then 0 at the start; Adam's per-coordinate scaling fills it again)",
    )
    p.add_argument(
        "--independent",
        action="store_true",
        help="x carries no identity: the true MI is 0 throughout",
    )
    p.add_argument("--sigma-x", type=float, default=0.3)
    p.add_argument("--sigma-y", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument(
        "--out", type=Path, help="plot (default: benchmarks/results/mi_game_<preset>.png)"
    )
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or Path(__file__).parent / "results" / f"mi_game_{args.preset}.png"
    return args


def make_toy(args: argparse.Namespace) -> Toy:
    rng = np.random.default_rng(args.seed)
    a = rng.standard_normal((args.dx, 1 + args.k))
    if args.identity_rows < args.dx:  # identity only in identity_rows dims of x
        a[rng.permutation(args.dx)[args.identity_rows :], 1:] = 0.0
    a[:, 1:] *= 0.0 if args.independent else args.identity_scale
    b = (
        np.eye(args.k)
        if args.dy == args.k  # the toy: y = v + σ_y ε
        else rng.standard_normal((args.dy, args.k)) / np.sqrt(args.k)
    )
    return Toy(a, b, args.sigma_x, args.sigma_y)


def mi_options(procedure: str, args: argparse.Namespace) -> argparse.Namespace:
    """train.py's options of a row (its defaults, the row's MI options, the game's batch)."""
    flags = [f.format(hidden=args.hidden) for f in PROCEDURES[procedure]]
    return train.parse_args(
        [
            "--dataset",
            "synthetic",
            "--batch-size",
            str(args.batch_size),
            "--alpha",
            str(args.alpha),
            *flags,
            *shlex.split(args.train_options),
        ]
    )


def play(toy: Toy, procedure: str | None, args: argparse.Namespace) -> dict:
    """One game; ``procedure`` None trains the task alone (no MI term)."""
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    encoder = nn.Linear(args.dx, args.dz, bias=False)  # z_E = W x
    head = nn.Linear(args.dz, 1)
    opt_e = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=args.lr_encoder)
    x, c, y = toy.sample(args.pool, g)  # the pool; clip k is subject k
    if args.init == "span":
        with torch.no_grad():
            encoder.weight.copy_(encoder.weight @ pool_span(x).float())
    critic, options = None, None
    if procedure is not None:
        options = mi_options(procedure, args)
        pool = SimpleNamespace(
            rows=[{"subject": str(k), "label": 0} for k in range(args.pool)],
            subjects=[str(k) for k in range(args.pool)],
        )
        critic = train.build_critic(options, pool, args.dz, y, torch.device("cpu"))
    mi_start = toy.true_mi(encoder.weight.detach().double().numpy())
    curve, estimates, task, active = [], [], [], []
    step = 0
    while step < args.steps:
        for ids in torch.randperm(args.pool, generator=g).split(args.batch_size):
            if len(ids) < args.batch_size or step == args.steps:  # drop_last, as train.py
                continue
            z = encoder(x[ids])
            loss = F.mse_loss(head(z), c[ids])
            task.append(loss.item())
            raw = None if critic is None else train.mi_estimate(critic, z, y[ids], ids, options)
            if raw is not None:
                term = mi.mi_penalty(critic.estimator, raw)
                estimates.append(raw.item())
                active.append(term.requires_grad and term.item() != 0.0)
                loss = loss + args.alpha * term
            opt_e.zero_grad()
            loss.backward()
            opt_e.step()
            if step % 25 == 0 or step == args.steps - 1:
                curve.append((step, toy.true_mi(encoder.weight.detach().double().numpy())))
            step += 1
    tail = max(1, args.steps // 10)
    curve = np.array(curve)
    x_tr, _, y_tr = toy.sample(2000, g)  # held out: a fresh estimator on new samples
    x_te, _, y_te = toy.sample(2000, g)
    with torch.no_grad():
        z_tr, z_te = encoder(x_tr), encoder(x_te)
    held = mi.heldout_mi(z_tr, y_tr, z_te, y_te, "mine", dims=16)
    return {
        "mi_start": mi_start,
        "mi_end": float(curve[curve[:, 0] >= args.steps - tail, 1].mean()),
        "estimate": float(np.mean(estimates[-tail:])) if estimates else float("nan"),
        "active": float(np.mean(active)) if active else float("nan"),
        "heldout": held,
        "task": float(np.mean(task[-tail:])),
        "curve": curve,
        "estimates": np.array(estimates),
        "weight": encoder.weight.detach(),
        "pool": (x, c, y),
    }


def pool_span(x: torch.Tensor) -> torch.Tensor:
    """(d_x, d_x) projection (float64) onto the span of the pool's x: the gradient of the
    encoder W lies inside it (∂/∂W = Σ_k g_k x_kᵀ); only Adam's per-coordinate scaling moves W
    outside, blindly."""
    u, sv, vt = torch.linalg.svd(x.double(), full_matrices=False)
    basis = vt[sv > sv.max() * 1e-10]
    return basis.T @ basis


def pool_references(
    toy: Toy, w: torch.Tensor, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor, dims: int
) -> dict[str, float]:
    """Two closed-form references for an encoder W that learned on the pool (x, c, y). "Out of
    the pool's reach": the true MI of the part of W x along directions of x in which no clip of
    the pool varies (no procedure that learns from the pool sees identity there; Adam's
    per-coordinate scaling moves W there blindly). "The pool's identity directions removed": the
    true MI of W without the directions of x's in-sample covariance with z_I's first ``dims``
    principal components, these taken apart from the task's c (so the task is kept): the identity
    the table's q can see. A procedure that removes exactly the identity the pool shows ends near
    the latter; to go below it needs more clips."""
    w = w.double()
    xc, yc, cc = (t.double() - t.double().mean(0) for t in (x, y, c))
    top = yc @ torch.linalg.svd(yc, full_matrices=False).Vh[:dims].T
    given_c = top - cc @ torch.linalg.lstsq(cc, top).solution
    q = torch.linalg.qr(xc.T @ given_c).Q
    spanned = int(torch.linalg.matrix_rank(x.double())) == x.shape[1]
    outside = w @ (torch.eye(x.shape[1], dtype=torch.float64) - pool_span(x))
    return {
        "out of the pool's reach": 0.0 if spanned else toy.true_mi(outside.numpy()),
        "the pool's identity directions removed": toy.true_mi((w - w @ q @ q.T).numpy()),
    }


def plot(runs: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, r) in enumerate(runs.items()):
        ax.plot(
            r["curve"][:, 0],
            r["curve"][:, 1],
            color="0.5" if name == "task alone" else f"C{i}",
            lw=1.5,
            label=name,
        )
    ax.set_title("true MI I(z_E; z_I) during training", fontsize=9)
    ax.set_xlabel("encoder step")
    ax.set_ylabel("nats")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    toy = make_toy(args)
    start = time.time()
    title = (
        f"preset {args.preset}: {args.steps} encoder steps, batch {args.batch_size}, pool "
        f"{args.pool}, alpha {args.alpha}, lr encoder {args.lr_encoder}; d_x {args.dx}, "
        f"d_z {args.dz}, k {args.k}, d_y {args.dy}, identity in {args.identity_rows} dims "
        f"of x, scale {args.identity_scale}, init {args.init}"
        f"{', independent (true MI 0)' if args.independent else ''}"
    )
    print(
        title + "; the MI term, true MI end and task MSE averaged over the last 10% of steps; "
        "active: share of steps whose MI term moved z_E; held out: a fresh MINE on new "
        "samples\n"
    )
    print(
        "| procedure | true MI start | true MI end | end / task alone | MI term (training) "
        "| active | held-out estimate | task MSE end | task / task alone |"
    )
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    runs = {}
    rows = [p for p in args.procedures.split(",") if p]
    for name in ["task alone", *rows]:  # each row as its game ends
        t = time.time()
        r = runs[name] = play(toy, None if name == "task alone" else name, args)
        base = runs["task alone"]
        print(
            f"| {name} | {r['mi_start']:.3f} | {r['mi_end']:.3f} | "
            f"{r['mi_end'] / base['mi_end']:.2f} | {r['estimate']:.3f} | {r['active']:.2f} | "
            f"{r['heldout']:.3f} | {r['task']:.4f} | {r['task'] / base['task']:.2f} |",
            flush=True,
        )
        print(f"  ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
        if name == "task alone":
            dims = mi_options("table", args).mi_dims or args.dy
            for ref, value in pool_references(toy, r["weight"], *r["pool"], dims).items():
                print(
                    f"| task alone, {ref} (closed form) | {r['mi_start']:.3f} | {value:.3f} | "
                    f"{value / r['mi_end']:.2f} | – | – | – | – | – |"
                )
    plot(runs, args.out, title)
    print(f"\nplot: {args.out}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
