"""Mutual-information estimators for the MIC regulariser (MINE, NWJ, InfoNCE, CLUB).

Every estimator is an ``nn.Module`` built as ``Cls(d_e, d_i, hidden=...)`` with two methods:

- ``forward(z_e, z_i)``: the differentiable MI estimate (nats) that the encoder minimises;
- ``loss_T(z_e, z_i)``: the loss whose minimisation trains the estimator's own network T_θ
  (call it on detached features).

``z_e`` (expression feature z_E) is ``(n, d_e)``, ``z_i`` (identity feature z_I) is ``(n, d_i)``;
row k of both is one joint sample. Samples of the product of marginals are made inside the batch.

Inside training (train.py), T_θ learns on pairs it is not scored on: ``PairMemory`` keeps the
detached pairs of recent batches and ``train_critic`` draws T_θ's batches from it, never from the
current batch; the encoder's MI term is then T_θ's estimate on the current batch. Afterwards,
``heldout_mi`` measures MI with a fresh estimator trained on training clips and evaluated on test
clips (evaluate.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MARGINALS = ("roll", "all_pairs")
EVAL_BATCH = 512  # held-out batch of heldout_mi (and so estimate_mi)


def log_mean_exp(t: Tensor, dim: int = 0) -> Tensor:
    """``log(mean(exp(t)))`` along ``dim``, as ``logsumexp − log n`` (no overflow)."""
    return torch.logsumexp(t, dim=dim) - math.log(t.shape[dim])


def dv_bound(t_joint: Tensor, t_marginal: Tensor) -> Tensor:
    """Donsker–Varadhan bound ``E_P[T] − log E_Q[e^T]`` from scores of joint / marginal samples."""
    return t_joint.mean() - log_mean_exp(t_marginal.reshape(-1))


def _check_batch(n: int) -> None:
    if n < 2:
        raise ValueError(f"MI estimation needs a batch of at least 2 samples, got {n}")


def shift_marginal(z: Tensor, shift: int = 1) -> Tensor:
    """Marginal samples: ``z`` rolled by ``shift`` inside the batch, ``cat([z[s:], z[:s]])``.

    Pairing ``z_e[k]`` with ``shift_marginal(z_i)[k] = z_i[k + shift]`` never pairs a sample with
    itself, provided ``shift`` is not a multiple of the batch size.
    """
    n = z.shape[0]
    _check_batch(n)
    if shift % n == 0:
        raise ValueError(f"shift {shift} is a multiple of the batch size {n}: nothing would move")
    s = shift % n
    return torch.cat([z[s:], z[:s]])


class StatisticsNetwork(nn.Module):
    """T_θ(z_E, z_I): each input embedded by Linear+ReLU, then concat → Linear+ReLU → Linear."""

    def __init__(self, d_e: int, d_i: int, hidden: int = 1024):
        super().__init__()
        self.fc_e = nn.Linear(d_e, hidden)
        self.fc_i = nn.Linear(d_i, hidden)
        self.fc_joint = nn.Linear(2 * hidden, hidden)
        self.fc_out = nn.Linear(hidden, 1)

    def embed(self, z_e: Tensor, z_i: Tensor) -> tuple[Tensor, Tensor]:
        """First layer of each branch: ``(relu(fc_e(z_e)), relu(fc_i(z_i)))``."""
        return F.relu(self.fc_e(z_e)), F.relu(self.fc_i(z_i))

    def score(self, h_e: Tensor, h_i: Tensor) -> Tensor:
        """Scores ``(n,)`` of row-wise paired embeddings."""
        h = F.relu(self.fc_joint(torch.cat([h_e, h_i], dim=-1)))
        return self.fc_out(h).squeeze(-1)

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Scores ``(n,)``: ``T(z_e[k], z_i[k])``."""
        return self.score(*self.embed(z_e, z_i))

    def all_pairs(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Scores ``(n, n)`` of every pair: ``[k, j] = T(z_e[k], z_i[j])``.

        Each input is embedded once; ``fc_joint`` on a concatenation is the sum of its two halves
        applied to each embedding, so the pairs only cost a broadcast add and the last layers.
        """
        h_e, h_i = self.embed(z_e, z_i)
        w_e, w_i = self.fc_joint.weight.chunk(2, dim=1)
        a_e = F.linear(h_e, w_e, self.fc_joint.bias)  # (n, hidden)
        a_i = F.linear(h_i, w_i)  # (n, hidden)
        h = F.relu(a_e[:, None, :] + a_i[None, :, :])  # (n, n, hidden)
        return self.fc_out(h).squeeze(-1)


class _CriticEstimator(nn.Module):
    """Shared part of the critic-based bounds: T_θ and its joint / marginal scores."""

    def __init__(self, d_e: int, d_i: int, hidden: int, marginal: str):
        super().__init__()
        if marginal not in MARGINALS:
            raise ValueError(f"marginal must be one of {MARGINALS}, got {marginal!r}")
        self.T = StatisticsNetwork(d_e, d_i, hidden)
        self.marginal = marginal

    def scores(self, z_e: Tensor, z_i: Tensor) -> tuple[Tensor, Tensor]:
        """Scores of the n joint pairs and of the marginal pairs (rolled: n, all pairs: n(n−1))."""
        if self.marginal == "roll":
            h_e, h_i = self.T.embed(z_e, z_i)
            return self.T.score(h_e, h_i), self.T.score(h_e, shift_marginal(h_i))
        n = z_e.shape[0]
        _check_batch(n)
        t = self.T.all_pairs(z_e, z_i)
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=t.device)
        return t.diagonal(), t[off_diagonal]


class MINE(_CriticEstimator):
    """MINE (Belghazi et al. 2018): the Donsker–Varadhan lower bound with a trained T_θ.

    ``marginal="roll"`` pairs z_E with z_I shifted by one in the batch (the MIC paper's choice);
    ``"all_pairs"`` uses all n(n−1) off-diagonal pairs at little extra cost.
    """

    def __init__(
        self,
        d_e: int,
        d_i: int,
        hidden: int = 1024,
        ema_rate: float = 0.01,
        marginal: str = "roll",
    ):
        super().__init__(d_e, d_i, hidden, marginal)
        if not 0.0 < ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in (0, 1], got {ema_rate}")
        self.ema_rate = ema_rate
        # log of the moving average of E_Q[e^T]; NaN until the first training batch.
        self.register_buffer("log_ma", torch.tensor(float("nan")))

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """DV estimate ``mean T(joint) − log mean e^T(marginal)`` (nats)."""
        return dv_bound(*self.scores(z_e, z_i))

    @torch.no_grad()
    def _moving_log_mean(self, lme: Tensor) -> Tensor:
        """Log of the moving average of ``mean e^T`` including this batch's ``lme`` (log space)."""
        if self.training:
            blended = torch.logaddexp(
                self.log_ma + math.log1p(-self.ema_rate), lme + math.log(self.ema_rate)
            )
            self.log_ma.copy_(torch.where(self.log_ma.isnan(), lme, blended))
        return torch.where(self.log_ma.isnan(), lme, self.log_ma)

    def loss_T(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Loss of T_θ with the bias-corrected gradient of MINE.

        ``log x ≤ log m + x/m − 1`` (tangent at the moving average m of ``mean e^T``) replaces the
        log-denominator: its gradient is ``E_Q[e^T ∇T] / m``, the paper's corrected gradient, and
        its value is −DV exactly when m equals the batch mean. m includes this batch (weight
        ``ema_rate``), so ``mean e^T / m ≤ 1 / ema_rate``: the ratio cannot overflow.
        """
        t_joint, t_marginal = self.scores(z_e, z_i)
        lme = log_mean_exp(t_marginal.reshape(-1))
        log_m = self._moving_log_mean(lme.detach())
        return -(t_joint.mean() - (log_m + torch.exp(lme - log_m) - 1.0))


class NWJ(_CriticEstimator):
    """NWJ / f-divergence lower bound (Nguyen, Wainwright, Jordan 2010): ``E_P[T] − E_Q[e^{T−1}]``.

    Unbiased in the batch but of high variance at large MI.
    """

    def __init__(self, d_e: int, d_i: int, hidden: int = 1024, marginal: str = "all_pairs"):
        super().__init__(d_e, d_i, hidden, marginal)

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """NWJ estimate (nats)."""
        t_joint, t_marginal = self.scores(z_e, z_i)
        return t_joint.mean() - torch.exp(log_mean_exp(t_marginal.reshape(-1)) - 1.0)

    def loss_T(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Negative bound: T_θ makes the bound tight."""
        return -self(z_e, z_i)


class InfoNCE(nn.Module):
    """InfoNCE / CPC lower bound (van den Oord et al. 2018) over all n² pairs of the batch.

    ``mean_k [T_kk − log mean_j e^{T_kj}]``: low variance, but it can never exceed ``log n``
    (n = batch size), so it saturates when the true MI is larger than that.
    """

    def __init__(self, d_e: int, d_i: int, hidden: int = 1024):
        super().__init__()
        self.T = StatisticsNetwork(d_e, d_i, hidden)

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """InfoNCE estimate (nats), at most ``log n``."""
        _check_batch(z_e.shape[0])
        t = self.T.all_pairs(z_e, z_i)
        return (t.diagonal() - log_mean_exp(t, dim=1)).mean()

    def loss_T(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Negative bound (the usual cross-entropy of the contrastive classification)."""
        return -self(z_e, z_i)


class CLUB(nn.Module):
    """CLUB (Cheng et al. 2020): contrastive log-ratio *upper* bound, suited to minimisation.

    A Gaussian q(z_I | z_E) = N(μ(z_E), diag e^{logvar(z_E)}) is fitted by maximum likelihood
    (``loss_T`` is its negative log-likelihood); the estimate is
    ``E_P[log q(z_I|z_E)] − E_Q[log q(z_I|z_E)]``, which is 0 in expectation under independence.
    It bounds MI from above only while q is close to the true conditional; with a flexible q it
    is a quantity to minimise, not an MI value.
    """

    def __init__(self, d_e: int, d_i: int, hidden: int = 1024):
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(d_e, hidden), nn.ReLU(), nn.Linear(hidden, d_i))
        self.logvar = nn.Sequential(nn.Linear(d_e, hidden), nn.ReLU(), nn.Linear(hidden, d_i))

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """CLUB estimate (nats) over the n joint and the n(n−1) marginal pairs of the batch."""
        n = z_e.shape[0]
        _check_batch(n)
        mu, inv_var = self.mu(z_e), torch.exp(-self.logvar(z_e))
        sq_joint = (z_i - mu) ** 2
        # mean over all j of (z_i[j] − μ_k)², from the batch mean and variance: O(n·d), not O(n²·d)
        sq_all = (mu - z_i.mean(0)) ** 2 + z_i.var(0, unbiased=False)
        sq_marginal = (n * sq_all - sq_joint) / (n - 1)  # j ≠ k only
        return 0.5 * ((sq_marginal - sq_joint) * inv_var).sum(1).mean()

    def loss_T(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Negative log-likelihood of z_I under q(z_I | z_E) (nats per sample)."""
        mu, logvar = self.mu(z_e), self.logvar(z_e)
        nll = (z_i - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi)
        return 0.5 * nll.sum(1).mean()


ESTIMATORS: dict[str, type[nn.Module]] = {
    "mine": MINE,
    "nwj": NWJ,
    "infonce": InfoNCE,
    "club": CLUB,
}


def build_estimator(name: str, d_e: int, d_i: int, hidden: int = 1024, **kw) -> nn.Module:
    """The estimator called ``name`` (a key of ``ESTIMATORS``); ``kw`` go to its constructor."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown MI estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name](d_e, d_i, hidden=hidden, **kw)


def gaussian_rho(mi: float, d: int) -> float:
    """Per-dimension correlation ρ giving ``mi = −d/2 · log(1 − ρ²)`` nats."""
    return math.sqrt(1.0 - math.exp(-2.0 * mi / d))


def correlated_gaussians(
    n: int, d: int, mi: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """n samples of x, y ~ N(0, I_d) with corr(x_k, y_k) = ρ per dimension and MI ``mi`` nats."""
    rho = gaussian_rho(mi, d)
    x = torch.randn(n, d, generator=generator)
    eps = torch.randn(n, d, generator=generator)
    return x, rho * x + math.sqrt(1.0 - rho**2) * eps


class PairMemory:
    """FIFO of detached (z_E, z_I) pairs of recent batches, with the id of the clip of each pair:
    T_θ's training pairs (``train_critic``). ``capacity`` pairs at most; the oldest go first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"a pair memory needs a capacity of at least 2, got {capacity}")
        self.capacity = capacity
        self.z_e: Tensor | None = None
        self.z_i: Tensor | None = None
        self.ids: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.ids is None else len(self.ids)

    @torch.no_grad()
    def push(self, z_e: Tensor, z_i: Tensor, ids: Tensor) -> None:
        """Append the pairs of a batch (detached), dropping the oldest beyond the capacity."""
        new = (z_e.detach().float(), z_i.detach().float(), ids.detach().to(z_e.device))
        if self.ids is None:
            self.z_e, self.z_i, self.ids = (t[-self.capacity :] for t in new)
            return
        self.z_e, self.z_i, self.ids = (
            torch.cat([old, t])[-self.capacity :]
            for old, t in zip((self.z_e, self.z_i, self.ids), new, strict=True)
        )

    def sample(
        self, n: int, exclude: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """Up to ``n`` random stored pairs whose clip id is not in ``exclude`` (the current
        batch), or None when fewer than 2 such pairs are stored."""
        if self.ids is None:
            return None
        free = torch.nonzero(~torch.isin(self.ids, exclude.to(self.ids.device))).flatten()
        if len(free) < 2:
            return None
        pick = torch.randperm(len(free), generator=generator)[:n].to(free.device)
        idx = free[pick]
        return self.z_e[idx], self.z_i[idx]


def train_critic(
    estimator: nn.Module,
    opt_t: torch.optim.Optimizer,
    z_e: Tensor,
    z_i: Tensor,
    ids: Tensor,
    steps: int,
    memory: PairMemory | None = None,
    generator: torch.Generator | None = None,
    sync: Callable[[nn.Module], None] | None = None,
    critic: Tensor | None = None,
) -> int:
    """``steps`` updates of the estimator's own network (T_θ) on the MI bound; returns how many
    were taken.

    With a ``memory``: each update draws a batch of ``len(z_e)`` pairs from it, leaving out the
    clips of the current batch (``ids``), so T_θ never trains on the pairs it then scores; then
    the current pairs join the memory (no update while it holds fewer than 2 usable pairs).
    Without: every update uses the current batch, the MIC paper's procedure (T_θ can memorise
    the batch it scores). ``critic`` (bool per pair, see ``critic_clips``): only these pairs join
    the memory. ``sync`` runs after each backward (DDP: average the gradients)."""
    z_e, z_i = z_e.detach(), z_i.detach()
    done = 0
    for _ in range(steps):
        pairs = (z_e, z_i) if memory is None else memory.sample(len(z_e), ids, generator)
        if pairs is None:
            break
        opt_t.zero_grad(set_to_none=True)
        estimator.loss_T(*pairs).backward()
        if sync is not None:
            sync(estimator)
        opt_t.step()
        done += 1
    if memory is not None:
        keep = slice(None) if critic is None else critic
        memory.push(z_e[keep], z_i[keep], ids[keep])
    return done


def mi_penalty(estimator: nn.Module, z_e: Tensor, z_i: Tensor) -> Tensor:
    """The MI term the encoder minimises: the estimator's value on the pairs, floored at 0.

    MI ≥ 0, so max(bound, 0) is as valid a bound as the bound itself; below 0 the critic has
    found nothing on these pairs (it is scored on clips it never trained on), and letting the
    encoder push the estimate further down would reward it for fooling T_θ, not for removing
    identity (measured: benchmarks/mi_game.py)."""
    return estimator(z_e, z_i).clamp(min=0.0)


def critic_clips(ids: Tensor, fraction: float) -> Tensor:
    """Which clips (bool per id) are T_θ's own: a fixed ``fraction`` of the training clips,
    chosen by a hash of the clip id. T_θ learns only on these and the MI term is computed only
    on the others, so that T_θ cannot have memorised the pairs it scores even when clips recur
    every epoch (a memory of recent batches alone does not prevent that)."""
    h = (ids.long() * 2654435761 + 12345) % 2**32  # Knuth's multiplicative hash
    return h.double() / 2**32 < fraction


def _standardise(train: Tensor, test: Tensor, dims: int | None) -> tuple[Tensor, Tensor]:
    """Both sets centred and scaled by the training set's statistics; with ``dims``, projected
    on the training set's first ``dims`` principal components first (whitened)."""
    mu = train.mean(0)
    train, test = train - mu, test - mu
    if dims is not None and dims < train.shape[1]:
        _, _, v = torch.linalg.svd(train, full_matrices=False)
        train, test = train @ v[:dims].T, test @ v[:dims].T
    sd = train.std(0) + 1e-8
    return train / sd, test / sd


def _pairs(x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    """``x (N, d_x)`` and ``y (N, d_y)`` as float32 tensors, or a ValueError."""
    x, y = (torch.as_tensor(a, dtype=torch.float32) for a in (x, y))
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must be (N, d) with the same N, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    return x, y


def heldout_mi(
    x_train: np.ndarray | Tensor,
    y_train: np.ndarray | Tensor,
    x_test: np.ndarray | Tensor,
    y_test: np.ndarray | Tensor,
    estimator: str = "mine",
    steps: int = 600,
    batch_size: int = 128,
    hidden: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    dims: int | None = None,
) -> float:
    """MI (nats) between paired samples, estimated on pairs the estimator never saw.

    A fresh estimator is trained with Adam (learning rate decaying linearly to 0) for ``steps``
    batches of the training pairs, then evaluated on the test pairs: the mean of its estimate
    over batches of up to ``EVAL_BATCH`` pairs (larger batches than in training make the
    log-mean-exp less biased and lift InfoNCE's ``log n`` cap). Both variables are standardised
    with the training set's statistics (MI is invariant to that); ``dims`` first projects each
    on its first principal components (fewer dimensions than samples: the estimate is then a
    lower bound of the MI of the projections)."""
    xs = [*_pairs(x_train, y_train), *_pairs(x_test, y_test)]
    if xs[0].shape[1] != xs[2].shape[1] or xs[1].shape[1] != xs[3].shape[1]:
        raise ValueError("training and test pairs must have the same dimensions")
    if len(xs[0]) < 2 or len(xs[2]) < 2:
        raise ValueError(f"need at least 2 training and 2 test pairs, got {len(xs[0])}, "
                         f"{len(xs[2])}")
    x_tr, x_te = _standardise(xs[0], xs[2], dims)
    y_tr, y_te = _standardise(xs[1], xs[3], dims)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        est = build_estimator(estimator, x_tr.shape[1], y_tr.shape[1], hidden=hidden)
    opt = torch.optim.Adam(est.parameters(), lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / steps)
    size = min(batch_size, len(x_tr))
    est.train()
    for _ in range(steps):
        idx = torch.randperm(len(x_tr), generator=g)[:size]
        opt.zero_grad()
        est.loss_T(x_tr[idx], y_tr[idx]).backward()
        opt.step()
        sched.step()
    est.eval()
    n = len(x_te)
    size = min(EVAL_BATCH, n)
    batches = torch.arange(n // size * size).view(-1, size)
    with torch.no_grad():
        return float(torch.stack([est(x_te[b], y_te[b]) for b in batches]).mean())


def estimate_mi(
    x: np.ndarray | Tensor, y: np.ndarray | Tensor, estimator: str = "mine", seed: int = 0,
    **options: Any,
) -> float:
    """MI (nats) between paired samples ``x (N, d_x)`` and ``y (N, d_y)``: ``heldout_mi`` trained
    on a random 80 % of the pairs and evaluated on the other 20 % (``options``: its steps,
    batch_size, hidden, lr, dims)."""
    x, y = _pairs(x, y)
    n_eval = x.shape[0] // 5
    if n_eval < 2:
        raise ValueError(f"need at least 10 samples, got {x.shape[0]}")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    train, held_out = perm[n_eval:], perm[:n_eval]
    return heldout_mi(x[train], y[train], x[held_out], y[held_out], estimator, seed=seed,
                      **options)
