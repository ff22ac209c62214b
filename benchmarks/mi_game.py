"""The MI minimisation game of MIC, on a toy whose true MI is known in closed form.

Latents: an expression c ~ N(0, 1) and an identity v ~ N(0, I_k). Observation
x = A [c; v] + σ_x n ∈ R^{d_x}; identity feature z_I = y = v + σ_y ε. A linear encoder z_E = W x
is trained on the task term ``MSE(head(z_E), c)`` plus ``alpha · estimate(z_E, z_I)``, while the
estimator's T_θ (or CLUB's q) takes ``t_steps`` steps per encoder step on the same batch, as in
train.py. (z_E, y) is jointly Gaussian, so

    I(z_E; y) = ½ [log det Σ_yy − log det(Σ_yy − Σ_yz Σ_zz⁺ Σ_zy)]

is exact at every step. An encoder whose rows are orthogonal to A's identity columns keeps c and
has I = 0, so the game can be won; an encoder can also fool a lagging T_θ (the estimate reads ~0
while the true MI stays high). The table shows which happens for each estimator and t_steps.

    python benchmarks/mi_game.py                     # ~8 min on a loaded 2-core CPU
    python benchmarks/mi_game.py --t-steps 1 5 --estimators mine
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


@dataclass
class Toy:
    """x = A [c; v] + σ_x n, y = v + σ_y ε (covariances in float64)."""

    A: np.ndarray  # (d_x, 1 + k)
    sigma_x: float
    sigma_y: float

    @property
    def k(self) -> int:
        return self.A.shape[1] - 1

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (n, d_x), c (n, 1), y (n, k)."""
        a = torch.as_tensor(self.A, dtype=torch.float32)
        latent = torch.randn(n, 1 + self.k, generator=g)
        x = latent @ a.T + self.sigma_x * torch.randn(n, a.shape[0], generator=g)
        y = latent[:, 1:] + self.sigma_y * torch.randn(n, self.k, generator=g)
        return x, latent[:, :1], y

    def true_mi(self, W: np.ndarray) -> float:
        """I(Wx; y) in nats, exact."""
        s_xx = self.A @ self.A.T + self.sigma_x**2 * np.eye(self.A.shape[0])
        s_zz = W @ s_xx @ W.T
        s_zy = W @ self.A[:, 1:]
        s_yy = (1 + self.sigma_y**2) * np.eye(self.k)
        s_cond = s_yy - s_zy.T @ np.linalg.pinv(s_zz, hermitian=True) @ s_zy
        return 0.5 * (np.linalg.slogdet(s_yy)[1] - np.linalg.slogdet(s_cond)[1])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--estimators", default="mine,club", help="comma-separated names of mi.py")
    p.add_argument(
        "--t-steps", type=int, nargs="+", default=[1, 2, 5, 10], help="T_θ steps per encoder step"
    )
    p.add_argument("--steps", type=int, default=2000, help="encoder steps")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the MI term")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=64, help="hidden width of T_θ / q")
    p.add_argument("--lr-encoder", type=float, default=1e-3)
    p.add_argument("--lr-T", type=float, default=2e-3)
    p.add_argument("--dx", type=int, default=8, help="dimension of x")
    p.add_argument("--dz", type=int, default=4, help="dimension of z_E")
    p.add_argument("--k", type=int, default=4, help="dimension of the identity v and of y")
    p.add_argument("--sigma-x", type=float, default=0.3)
    p.add_argument("--sigma-y", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mi_game.png")
    return p.parse_args()


def play(toy: Toy, name: str, t_steps: int, args: argparse.Namespace) -> dict:
    """One game; ``name == "none"`` trains the task alone (no MI term)."""
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    encoder = nn.Linear(args.dx, args.dz, bias=False)  # z_E = W x
    head = nn.Linear(args.dz, 1)
    opt_e = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=args.lr_encoder)
    est = None if name == "none" else mi.build_estimator(name, args.dz, toy.k, hidden=args.hidden)
    opt_t = None if est is None else torch.optim.Adam(est.parameters(), lr=args.lr_T)
    mi_start = toy.true_mi(encoder.weight.detach().double().numpy())
    curve, estimates, task = [], [], []
    for step in range(args.steps):
        x, c, y = toy.sample(args.batch_size, g)
        z = encoder(x)
        loss = F.mse_loss(head(z), c)
        task.append(loss.item())
        if est is not None:
            for _ in range(t_steps):
                opt_t.zero_grad()
                est.loss_T(z.detach(), y).backward()
                opt_t.step()
            value = est(z, y)
            estimates.append(value.item())
            loss = loss + args.alpha * value
        opt_e.zero_grad()
        loss.backward()
        opt_e.step()
        if step % 10 == 0 or step == args.steps - 1:
            curve.append((step, toy.true_mi(encoder.weight.detach().double().numpy())))
    tail = max(1, args.steps // 10)
    curve = np.array(curve)
    return {
        "mi_start": mi_start,
        "mi_end": float(curve[curve[:, 0] >= args.steps - tail, 1].mean()),
        "estimate": float(np.mean(estimates[-tail:])) if estimates else float("nan"),
        "task": float(np.mean(task[-tail:])),
        "curve": curve,
        "estimates": np.array(estimates),
    }


def plot(runs: dict[tuple[str, int], dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        base = runs[("none", 0)]["curve"]
        ax.plot(base[:, 0], base[:, 1], color="0.5", lw=1.5, label="true MI, task only")
        games = [(t, r) for (n, t), r in runs.items() if n == name]
        for i, (t, r) in enumerate(games):
            ax.plot(
                r["curve"][:, 0],
                r["curve"][:, 1],
                color=f"C{i}",
                lw=1.5,
                label=f"true MI, t_steps={t}",
            )
            smooth = np.convolve(r["estimates"], np.ones(25) / 25, mode="valid")
            ax.plot(np.arange(24, len(r["estimates"])), smooth, color=f"C{i}", ls="--", lw=0.8)
        ax.set_title(f"{name}: true MI (solid) and estimate (dashed)")
        ax.set_xlabel("encoder step")
        ax.set_ylabel("nats")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def best_task_mse(toy: Toy) -> float:
    """MSE of E[c | x], the floor of the task term."""
    s_xx = toy.A @ toy.A.T + toy.sigma_x**2 * np.eye(toy.A.shape[0])
    s_xc = toy.A[:, :1]
    return 1.0 - (s_xc.T @ np.linalg.solve(s_xx, s_xc)).item()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    toy = Toy(rng.standard_normal((args.dx, 1 + args.k)), args.sigma_x, args.sigma_y)
    names = args.estimators.split(",")
    start = time.time()
    runs = {("none", 0): play(toy, "none", 0, args)}
    for name in names:
        for t_steps in args.t_steps:
            t = time.time()
            runs[(name, t_steps)] = play(toy, name, t_steps, args)
            print(f"{name} t_steps={t_steps}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    print(
        f"{args.steps} encoder steps, batch {args.batch_size}, alpha {args.alpha}, "
        f"lr encoder {args.lr_encoder} / T {args.lr_T}, hidden {args.hidden}; "
        f"d_x {args.dx}, d_z {args.dz}, k {args.k}; true MI end, estimate and task MSE averaged "
        f"over the last 10% of steps (task MSE of the best linear read-out of c from x: "
        f"{best_task_mse(toy):.3f})\n"
    )
    print("| estimator | t_steps | true MI start | true MI end | final estimate | task MSE end |")
    print("|---|---|---|---|---|---|")
    for (name, t_steps), r in runs.items():
        t = "–" if name == "none" else str(t_steps)
        print(
            f"| {name} | {t} | {r['mi_start']:.3f} | {r['mi_end']:.3f} | "
            f"{r['estimate']:.3f} | {r['task']:.3f} |"
        )
    plot(runs, names, args.out)
    print(f"\nplot: {args.out}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
