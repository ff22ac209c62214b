"""The MI minimisation game of MIC, on a toy whose true MI is known in closed form.

Latents: an expression c ~ N(0, 1) and an identity v ~ N(0, I_k). Observation
x = A [c; v] + σ_x n ∈ R^{d_x}; identity feature z_I = y = B v + σ_y ε ∈ R^{d_y}. A linear encoder
z_E = W x ∈ R^{d_z} is trained on the task term ``MSE(head(z_E), c)`` plus ``alpha · MI term``,
the MI term being T_θ's estimate on the current batch floored at 0 (``mi.mi_penalty``), while
T_θ (or CLUB's q) takes ``t_steps`` steps per encoder step through ``mi.train_critic``, exactly
as train.py does: on pairs drawn from a
memory of recent batches that never holds the current clips (``--memory``, in batches), or on the
current batch itself (``--memory 0``: the MIC paper's procedure). With ``--pool N`` the data are a
fixed set of N clips that recur every epoch, as a training set does (``--pool 0``: fresh samples
every step). (z_E, y) is jointly Gaussian, so the population MI

    I(z_E; y) = ½ [log det Σ_yy − log det(Σ_yy − Σ_yz Σ_zz⁺ Σ_zy)]

is exact at every step. An encoder orthogonal to A's identity columns keeps c and has I = 0, so the
game can be won; an encoder can also fool a lagging T_θ (the estimate reads ~0 while the true MI
stays high), and T_θ can memorise recurring pairs (the estimate reads high while the true MI is 0:
``--independent`` zeroes A's identity columns, so the true MI is 0 throughout). At the end a fresh
estimator is trained on one population sample and evaluated on another (``mi.heldout_mi``), as
evaluate.py measures MI.

    python benchmarks/mi_game.py                     # the toy of the first round: d = 4, fresh data
    python benchmarks/mi_game.py --preset demo       # demo's dimensions, a recurring pool
    python benchmarks/mi_game.py --preset paper      # the paper's dimensions
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mi  # noqa: E402

# d_z: z_E (the demo: 4 segments × LSTM 64; the paper's: 2048), d_y: z_I (FaceNet CASIA 512,
# FaceNet-MobileNet 1024), batch, width of T_θ, a pool the size of a CK+-like training fold.
# x has more dimensions than z_E (the encoder can drop the identity directions); identity sits
# in a few of them (identity rows, scale: about 2 nats at the start, as the toy's 2.0).
PRESETS = {
    "toy": dict(dx=8, dz=4, k=4, dy=4, batch_size=128, hidden=64, pool=0, identity_scale=1.0,
                identity_rows=8),
    "demo": dict(dx=320, dz=256, k=8, dy=512, batch_size=16, hidden=512, pool=176,
                 identity_scale=0.07, identity_rows=16),
    "paper": dict(dx=2304, dz=2048, k=8, dy=1024, batch_size=48, hidden=1024, pool=290,
                  identity_scale=0.075, identity_rows=16),
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="toy",
                   help="dimensions, batch, T_θ width and pool (the options below override)")
    p.add_argument("--estimators", default="mine,club", help="comma-separated names of mi.py")
    p.add_argument("--t-steps", type=int, nargs="+", default=[1, 2, 5, 10],
                   help="T_θ steps per encoder step")
    p.add_argument("--memory", type=int, nargs="+", default=[0],
                   help="T_θ's pair memory in batches (0: T_θ on the current batch, the paper's)")
    p.add_argument("--critic-split", type=float, nargs="+", default=[0.0],
                   help="fraction of the clips reserved for T_θ (0: none; needs --memory)")
    p.add_argument("--steps", type=int, default=2000, help="encoder steps")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the MI term")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--hidden", type=int, help="hidden width of T_θ / q")
    p.add_argument("--lr-encoder", type=float, default=1e-3)
    p.add_argument("--lr-T", type=float, default=2e-3)
    p.add_argument("--dx", type=int, help="dimension of x")
    p.add_argument("--dz", type=int, help="dimension of z_E")
    p.add_argument("--k", type=int, help="dimension of the identity v")
    p.add_argument("--dy", type=int, help="dimension of z_I = y")
    p.add_argument("--pool", type=int, help="clips that recur every epoch (0: fresh samples)")
    p.add_argument("--identity-scale", type=float, help="scale of the identity in x")
    p.add_argument("--identity-rows", type=int, help="dimensions of x that carry identity")
    p.add_argument("--independent", action="store_true",
                   help="x carries no identity: the true MI is 0 throughout")
    p.add_argument("--sigma-x", type=float, default=0.3)
    p.add_argument("--sigma-y", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path,
                   help="plot (default: benchmarks/results/mi_game_<preset>.png)")
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
        a[rng.permutation(args.dx)[args.identity_rows:], 1:] = 0.0
    a[:, 1:] *= 0.0 if args.independent else args.identity_scale
    b = (np.eye(args.k) if args.dy == args.k  # the toy: y = v + σ_y ε
         else rng.standard_normal((args.dy, args.k)) / np.sqrt(args.k))
    return Toy(a, b, args.sigma_x, args.sigma_y)


def batches(toy: Toy, args: argparse.Namespace, g: torch.Generator):
    """(x, c, y, clip ids) per encoder step: from the recurring pool, or fresh samples."""
    if args.pool:
        x, c, y = toy.sample(args.pool, g)
        while True:
            for idx in torch.randperm(args.pool, generator=g).split(args.batch_size):
                if len(idx) == args.batch_size:  # drop_last, as train.py
                    yield x[idx], c[idx], y[idx], idx
    step = 0
    while True:
        ids = torch.arange(step * args.batch_size, (step + 1) * args.batch_size)
        yield (*toy.sample(args.batch_size, g), ids)
        step += 1


def play(toy: Toy, name: str, t_steps: int, memory: int, split: float,
         args: argparse.Namespace) -> dict:
    """One game; ``name == "none"`` trains the task alone (no MI term)."""
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    encoder = nn.Linear(args.dx, args.dz, bias=False)  # z_E = W x
    head = nn.Linear(args.dz, 1)
    opt_e = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=args.lr_encoder)
    est = None if name == "none" else mi.build_estimator(name, args.dz, toy.B.shape[0],
                                                         hidden=args.hidden)
    opt_t = None if est is None else torch.optim.Adam(est.parameters(), lr=args.lr_T)
    pairs = mi.PairMemory(memory * args.batch_size) if memory else None
    mi_start = toy.true_mi(encoder.weight.detach().double().numpy())
    curve, estimates, task = [], [], []
    data = batches(toy, args, g)
    for step in range(args.steps):
        x, c, y, ids = next(data)
        z = encoder(x)
        loss = F.mse_loss(head(z), c)
        task.append(loss.item())
        if est is not None:
            critic = mi.critic_clips(ids, split) if split else torch.zeros_like(ids, dtype=bool)
            mi.train_critic(est, opt_t, z, y, ids, t_steps, pairs, g, critic=critic)
            scored = ~critic  # the MI term: T_θ fixed, on the current batch's other clips
            if int(scored.sum()) >= 2:
                value = mi.mi_penalty(est, z[scored], y[scored])
                estimates.append(value.item())
                loss = loss + args.alpha * value
        opt_e.zero_grad()
        loss.backward()
        opt_e.step()
        if step % 25 == 0 or step == args.steps - 1:
            curve.append((step, toy.true_mi(encoder.weight.detach().double().numpy())))
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
        "heldout": held,
        "task": float(np.mean(task[-tail:])),
        "curve": curve,
        "estimates": np.array(estimates),
    }


def plot(runs: dict[tuple, dict], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        base = runs[("none", 0, 0, 0.0)]["curve"]
        ax.plot(base[:, 0], base[:, 1], color="0.5", lw=1.5, label="true MI, task only")
        games = [(t, m, f, r) for (n, t, m, f), r in runs.items() if n == name]
        for i, (t, m, f, r) in enumerate(games):
            ax.plot(r["curve"][:, 0], r["curve"][:, 1], color=f"C{i}", lw=1.5,
                    label=f"t_steps={t}, memory={m}, split={f}")
            if len(r["estimates"]) >= 25:
                smooth = np.convolve(r["estimates"], np.ones(25) / 25, mode="valid")
                ax.plot(np.arange(24, len(r["estimates"])), smooth, color=f"C{i}", ls="--", lw=0.8)
        ax.set_title(f"{name}: true MI (solid), MI term (dashed)", fontsize=9)
        ax.set_xlabel("encoder step")
        ax.set_ylabel("nats")
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    toy = make_toy(args)
    names = args.estimators.split(",")
    start = time.time()
    title = (f"preset {args.preset}: {args.steps} encoder steps, batch {args.batch_size}, pool "
             f"{args.pool or 'fresh'}, alpha {args.alpha}, lr encoder {args.lr_encoder} / T "
             f"{args.lr_T}, T width {args.hidden}; d_x {args.dx}, d_z {args.dz}, k {args.k}, "
             f"d_y {args.dy}, identity in {args.identity_rows} dims of x, scale "
             f"{args.identity_scale}"
             f"{', independent (true MI 0)' if args.independent else ''}")
    print(title + f"; task MSE floor {toy.best_task_mse():.3f}; the MI term, true MI end and task "
          "MSE averaged over the last 10% of steps; held out: a fresh MINE on new samples\n")
    print("| estimator | t_steps | memory (batches) | critic split | true MI start | true MI end "
          "| MI term (training) | held-out estimate | task MSE end |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    games = [("none", 0, 0, 0.0)] + [(name, t, m, f) for name in names for m in args.memory
                                     for f in (args.critic_split if m else [0.0])
                                     for t in args.t_steps]
    runs = {}
    for name, t_steps, memory, split in games:  # each row as soon as its game ends
        t = time.time()
        r = runs[(name, t_steps, memory, split)] = play(toy, name, t_steps, memory, split, args)
        cols = ("–",) * 3 if name == "none" else (t_steps, memory, split)
        print(f"| {name} | {' | '.join(map(str, cols))} | {r['mi_start']:.3f} | "
              f"{r['mi_end']:.3f} | {r['estimate']:.3f} | {r['heldout']:.3f} | "
              f"{r['task']:.3f} |", flush=True)
        print(f"  ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    plot(runs, names, args.out, title)
    print(f"\nplot: {args.out}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
