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
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

MARGINALS = ("roll", "all_pairs")
# How T_θ learns and what the MI term scores (train.py --mi-procedure): ClipTable, PairMemory,
# or the current batch (the MIC paper's).
PROCEDURES = ("table", "memory", "paper")
CRITIC_NAMES = ("mlp", "separable", "linear", "ridge")  # linear, ridge: CLUB's linear q
EVAL_BATCH = 512  # held-out batch of heldout_mi (and so estimate_mi)


def log_mean_exp(t: Tensor, dim: int = 0) -> Tensor:
    """``log(mean(exp(t)))`` along ``dim``, as ``logsumexp − log n`` (no overflow)."""
    return torch.logsumexp(t, dim=dim) - math.log(t.shape[dim])


def masked_log_mean_exp(t: Tensor, mask: Tensor) -> Tensor:
    """``log(mean(exp(t[mask])))`` over every entry where ``mask`` holds (at least one)."""
    return torch.logsumexp(t[mask], dim=0) - math.log(int(mask.sum()))


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


class SeparableCritic(nn.Module):
    """T_θ(z_E, z_I) = g(z_E)·h(z_I) with linear g, h onto ``hidden`` dimensions: a separable
    critic (Poole et al. 2019) of rank ``hidden``. It sees only the linear dependence of z_E and
    z_I, but it learns it from a few hundred clips where the MLP memorises them, and every pair
    of n × m costs one matrix product."""

    def __init__(self, d_e: int, d_i: int, hidden: int = 32):
        super().__init__()
        self.g = nn.Linear(d_e, hidden)
        self.h = nn.Linear(d_i, hidden)

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Scores ``(n,)``: ``T(z_e[k], z_i[k])``."""
        return (self.g(z_e) * self.h(z_i)).sum(-1)

    def all_pairs(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Scores ``(n, m)`` of every pair: ``[k, j] = T(z_e[k], z_i[j])``."""
        return self.g(z_e) @ self.h(z_i).T


CRITICS: dict[str, type[nn.Module]] = {"mlp": StatisticsNetwork, "separable": SeparableCritic}


class _CriticEstimator(nn.Module):
    """Shared part of the critic-based bounds: T_θ and its joint / marginal scores."""

    def __init__(self, d_e: int, d_i: int, hidden: int, marginal: str, critic: str = "mlp"):
        super().__init__()
        if marginal not in MARGINALS:
            raise ValueError(f"marginal must be one of {MARGINALS}, got {marginal!r}")
        if critic not in CRITICS:
            raise ValueError(f"critic must be one of {', '.join(CRITICS)}, got {critic!r}")
        self.T = CRITICS[critic](d_e, d_i, hidden)
        self.marginal = marginal

    def scores(self, z_e: Tensor, z_i: Tensor) -> tuple[Tensor, Tensor]:
        """Scores of the n joint pairs and of the marginal pairs (rolled: n, all pairs: n(n−1))."""
        if self.marginal == "roll":
            return self.T(z_e, z_i), self.T(z_e, shift_marginal(z_i))
        n = z_e.shape[0]
        _check_batch(n)
        t = self.T.all_pairs(z_e, z_i)
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=t.device)
        return t.diagonal(), t[off_diagonal]

    def joint_scores(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """``(n,)`` scores of the row-wise pairs ``T(z_e[k], z_i[k])``."""
        return self.T(z_e, z_i)

    bound_joint_scores = joint_scores  # the joint terms of the bound (CLUB may differ)

    def pair_scores(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """``(n, m)`` scores of every pair ``T(z_e[k], z_i[j])``."""
        return self.T.all_pairs(z_e, z_i)

    def critic_loss(self, t_joint: Tensor, t_pairs: Tensor, mask: Tensor) -> Tensor:
        """Loss of T_θ from joint scores and the masked marginal pairs: the negative bound."""
        return -self.bound(t_joint, t_pairs, mask)


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
        critic: str = "mlp",
    ):
        super().__init__(d_e, d_i, hidden, marginal, critic)
        if not 0.0 < ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in (0, 1], got {ema_rate}")
        self.ema_rate = ema_rate
        # log of the moving average of E_Q[e^T]; NaN until the first training batch.
        self.register_buffer("log_ma", torch.tensor(float("nan")))

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """DV estimate ``mean T(joint) − log mean e^T(marginal)`` (nats)."""
        return dv_bound(*self.scores(z_e, z_i))

    def bound(self, t_joint: Tensor, t_pairs: Tensor, mask: Tensor) -> Tensor:
        """DV estimate with the marginal pairs ``t_pairs[mask]``."""
        return t_joint.mean() - masked_log_mean_exp(t_pairs, mask)

    def critic_loss(self, t_joint: Tensor, t_pairs: Tensor, mask: Tensor) -> Tensor:
        """``loss_T``'s bias-corrected loss with the marginal pairs ``t_pairs[mask]``."""
        lme = masked_log_mean_exp(t_pairs, mask)
        log_m = self._moving_log_mean(lme.detach())
        return -(t_joint.mean() - (log_m + torch.exp(lme - log_m) - 1.0))

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

    def __init__(
        self,
        d_e: int,
        d_i: int,
        hidden: int = 1024,
        marginal: str = "all_pairs",
        critic: str = "mlp",
    ):
        super().__init__(d_e, d_i, hidden, marginal, critic)

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """NWJ estimate (nats)."""
        t_joint, t_marginal = self.scores(z_e, z_i)
        return t_joint.mean() - torch.exp(log_mean_exp(t_marginal.reshape(-1)) - 1.0)

    def loss_T(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Negative bound: T_θ makes the bound tight."""
        return -self(z_e, z_i)

    def bound(self, t_joint: Tensor, t_pairs: Tensor, mask: Tensor) -> Tensor:
        """NWJ estimate with the marginal pairs ``t_pairs[mask]``."""
        return t_joint.mean() - torch.exp(masked_log_mean_exp(t_pairs, mask) - 1.0)


class InfoNCE(_CriticEstimator):
    """InfoNCE / CPC lower bound (van den Oord et al. 2018) over all n² pairs of the batch.

    ``mean_k [T_kk − log mean_j e^{T_kj}]``: low variance, but it can never exceed ``log n``
    (n = batch size), so it saturates when the true MI is larger than that.
    """

    def __init__(self, d_e: int, d_i: int, hidden: int = 1024, critic: str = "mlp"):
        super().__init__(d_e, d_i, hidden, "all_pairs", critic)

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """InfoNCE estimate (nats), at most ``log n``."""
        _check_batch(z_e.shape[0])
        t = self.T.all_pairs(z_e, z_i)
        return (t.diagonal() - log_mean_exp(t, dim=1)).mean()

    def loss_T(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Negative bound (the usual cross-entropy of the contrastive classification)."""
        return -self(z_e, z_i)

    def bound(self, t_joint: Tensor, t_pairs: Tensor, mask: Tensor) -> Tensor:
        """InfoNCE with row k's negatives ``t_pairs[k][mask[k]]`` (rows without one count 0)."""
        rows = torch.cat([t_joint[:, None], t_pairs.masked_fill(~mask, -math.inf)], dim=1)
        lme = torch.logsumexp(rows, dim=1) - torch.log1p(mask.sum(1).to(rows.dtype))
        return (t_joint - lme).mean()


CLUB_JOINTS = ("expected", "sample")


class CLUB(nn.Module):
    """CLUB (Cheng et al. 2020): contrastive log-ratio *upper* bound, suited to minimisation.

    A Gaussian q(z_I | z_E) = N(μ(z_E), diag e^{logvar(z_E)}) is fitted by maximum likelihood
    (``loss_T`` is its negative log-likelihood); the estimate is
    ``E_P[log q(z_I|z_E)] − E_Q[log q(z_I|z_E)]``, which is 0 in expectation under independence.
    It bounds MI from above only while q is close to the true conditional; with a flexible q it
    is a quantity to minimise, not an MI value.

    ``joint``: the joint term ``log q(z_I | z_E)`` of each clip's own z_I ("sample", Cheng et
    al.'s) or its expectation under q, −H(q(· | z_E)) ("expected"). Both have one expectation
    when q is the true conditional. The sample form is linear in z_E for a fixed linear q, so an
    encoder minimising it can go below 0 without bound by predicting z_I's opposite (against a q
    that lags); the expected form is ½‖μ(z_E) − E z_I‖² in q's metric plus a constant, smallest
    where q predicts nothing but the marginal's mean, and its gradient does not carry z_I's
    sampling noise.
    """

    def __init__(
        self,
        d_e: int,
        d_i: int,
        hidden: int = 1024,
        critic: str = "mlp",
        ridge: float = 0.1,
        joint: str = "sample",
    ):
        super().__init__()
        if joint not in CLUB_JOINTS:
            raise ValueError(f"CLUB's joint term is {' or '.join(CLUB_JOINTS)}, got {joint!r}")
        self.ridge, self.joint = ridge, joint
        if critic == "mlp":
            self.mu = nn.Sequential(nn.Linear(d_e, hidden), nn.ReLU(), nn.Linear(hidden, d_i))
            self.logvar = nn.Sequential(nn.Linear(d_e, hidden), nn.ReLU(), nn.Linear(hidden, d_i))
        elif critic in ("linear", "ridge"):  # q(z_I | z_E) = N(A z_E + b, diag σ²)
            self.mu = nn.Linear(d_e, d_i)
            self.log_sigma2 = nn.Parameter(torch.zeros(d_i), requires_grad=critic == "linear")
            self.logvar = lambda z_e: self.log_sigma2.expand(len(z_e), -1)
        else:
            raise ValueError(f"CLUB's q is 'mlp', 'linear' or 'ridge', got {critic!r}")
        # "ridge": q is not trained by gradient steps but fitted in closed form (``fit``)
        self.closed_form = critic == "ridge"
        if self.closed_form:
            self.mu.requires_grad_(False)

    @torch.no_grad()
    def fit(self, z_e: Tensor, z_i: Tensor) -> None:
        """q fitted exactly: A by ridge regression of z_I on z_E (penalty ``self.ridge`` times
        the mean eigenvalue of z_E's scatter), σ² each dimension's mean squared leave-one-out
        residual, e_k / (1 − H_kk) with H the fit's hat matrix: q is scored on clips it was not
        fitted on, and in-sample residuals are far too small when z_E has about as many
        dimensions as there are clips (with a small ridge the fit then nearly interpolates)."""
        mu_e, mu_i = z_e.mean(0), z_i.mean(0)
        x, y = z_e - mu_e, z_i - mu_i
        n, d = x.shape
        gram = x @ x.T if n < d else x.T @ x  # fewer clips than dimensions: the dual form
        lam = self.ridge * (gram.diagonal().sum() / d).clamp(min=1e-8)
        eye = torch.eye(len(gram), device=gram.device)
        # X (XᵀX + λ)⁻¹ = (XXᵀ + λ)⁻¹ X, row k of which · x_k is H_kk
        x_m = torch.linalg.solve(gram + lam * eye, x if n < d else x.T)
        x_m = x_m if n < d else x_m.T
        a = x_m.T @ y
        leverage = (x_m * x).sum(1) + 1.0 / n  # + the mean's
        loo = (y - x @ a) / (1.0 - leverage).clamp(min=1e-6)[:, None]
        self.mu.weight.copy_(a.T)
        self.mu.bias.copy_(mu_i - mu_e @ a)
        sigma2 = (loo**2).mean(0) + 1e-3 * y.var(0).mean()
        self.log_sigma2.copy_(sigma2.log())

    def forward(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """CLUB estimate (nats) over the n joint and the n(n−1) marginal pairs of the batch."""
        n = z_e.shape[0]
        _check_batch(n)
        mu, inv_var = self.mu(z_e), torch.exp(-self.logvar(z_e))
        sq_joint = (z_i - mu) ** 2
        # mean over all j of (z_i[j] − μ_k)², from the batch mean and variance: O(n·d), not O(n²·d)
        sq_all = (mu - z_i.mean(0)) ** 2 + z_i.var(0, unbiased=False)
        sq_marginal = (n * sq_all - sq_joint) / (n - 1)  # j ≠ k only
        if self.joint == "expected":  # E_q[(z_I − μ)² / σ²] = 1 in each dimension
            return 0.5 * ((sq_marginal * inv_var).sum(1) - z_i.shape[1]).mean()
        return 0.5 * ((sq_marginal - sq_joint) * inv_var).sum(1).mean()

    def loss_T(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """Negative log-likelihood of z_I under q(z_I | z_E) (nats per sample)."""
        return -self.joint_scores(z_e, z_i).mean()

    def joint_scores(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """``(n,)`` log-likelihoods ``log q(z_i[k] | z_e[k])``."""
        mu, logvar = self.mu(z_e), self.logvar(z_e)
        nll = (z_i - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi)
        return -0.5 * nll.sum(1)

    def bound_joint_scores(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """``(n,)`` joint terms of the estimate: ``joint_scores``, or with ``joint`` "expected"
        their expectation under q, the negative entropy of q(· | z_e[k])."""
        if self.joint == "sample":
            return self.joint_scores(z_e, z_i)
        return -0.5 * (self.logvar(z_e).sum(1) + z_i.shape[1] * (1 + math.log(2 * math.pi)))

    def pair_scores(self, z_e: Tensor, z_i: Tensor) -> Tensor:
        """``(n, m)`` log-likelihoods ``log q(z_i[j] | z_e[k])``, in O(n·m) memory (matmuls)."""
        mu, logvar = self.mu(z_e), self.logvar(z_e)
        w = torch.exp(-logvar)
        sq = (w * mu**2).sum(1, keepdim=True) - 2 * (w * mu) @ z_i.T + w @ (z_i**2).T
        const = logvar.sum(1, keepdim=True) + z_e.new_tensor(z_i.shape[1] * math.log(2 * math.pi))
        return -0.5 * (sq + const)

    def bound(self, t_joint: Tensor, t_pairs: Tensor, mask: Tensor) -> Tensor:
        """CLUB estimate with the marginal pairs ``t_pairs[mask]``."""
        return t_joint.mean() - t_pairs[mask].mean()

    def critic_loss(self, t_joint: Tensor, t_pairs: Tensor, mask: Tensor) -> Tensor:
        """q's negative log-likelihood on the joint pairs (the marginal pairs play no part)."""
        return -t_joint.mean()


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

    def _free(self, exclude: Tensor) -> Tensor:
        """Indices of the stored pairs whose clip id is not in ``exclude``."""
        if self.ids is None:
            return torch.zeros(0, dtype=torch.long)
        return torch.nonzero(~torch.isin(self.ids, exclude.to(self.ids.device))).flatten()

    def usable(self, exclude: Tensor) -> int:
        """How many stored pairs are not of the clips ``exclude``."""
        return len(self._free(exclude))

    def sample(
        self, n: int, exclude: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """Up to ``n`` random stored pairs whose clip id is not in ``exclude`` (the current
        batch), or None when fewer than 2 such pairs are stored."""
        free = self._free(exclude)
        if len(free) < 2:
            return None
        pick = torch.randperm(len(free), generator=generator)[:n].to(free.device)
        idx = free[pick]
        return self.z_e[idx], self.z_i[idx]


def agreed_count(n: int, device: torch.device | None = None) -> int:
    """``n`` made the same on every rank (their minimum) under torch.distributed, else ``n``: ranks
    that all-reduce T_θ's gradients must take the same number of steps."""
    if not (dist.is_available() and dist.is_initialized()):
        return n
    t = torch.tensor(n, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


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
    the current pairs join the memory (no update while it holds fewer than 2 usable pairs on any
    rank: ranks agree on the count, ``agreed_count``). Without: every update uses the current
    batch, the MIC paper's procedure (T_θ can memorise the batch it scores). ``critic`` (bool per
    pair, see ``critic_clips``): only these pairs join the memory. ``sync`` runs after each
    backward (DDP: average the gradients)."""
    z_e, z_i = z_e.detach(), z_i.detach()
    if memory is not None and agreed_count(memory.usable(ids), z_e.device) < 2:
        steps = 0
    for _ in range(steps):
        pairs = (z_e, z_i) if memory is None else memory.sample(len(z_e), ids, generator)
        opt_t.zero_grad(set_to_none=True)
        estimator.loss_T(*pairs).backward()
        if sync is not None:
            sync(estimator)
        opt_t.step()
    if memory is not None:
        keep = slice(None) if critic is None else critic
        memory.push(z_e[keep], z_i[keep], ids[keep])
    return steps


LOWER_BOUNDS = (MINE, NWJ, InfoNCE)


def mi_penalty(estimator: nn.Module, value: Tensor) -> Tensor:
    """The MI term the encoder minimises from the estimator's ``value``: a lower bound (MINE,
    NWJ, InfoNCE) floored at 0, CLUB's upper bound as it is.

    MI ≥ 0, so max(bound, 0) is as valid a lower bound as the bound itself; below 0 the critic
    has found nothing on these pairs, and letting the encoder push a lower bound further down
    would reward it for fooling T_θ (encoding identity against T_θ's sign), not for removing
    identity (measured: benchmarks/mi_game.py)."""
    return value.clamp(min=0.0) if isinstance(estimator, LOWER_BOUNDS) else value


class ClipTable:
    """The training set as T_θ sees it (the default procedure): every training clip's fixed z_I
    beside the latest detached z_E the encoder gave it, and its subject and label.

    z_I is computed once per clip, so marginal partners can come from the whole table rather than
    the batch: the MI term of a batch (``penalty``) scores its clips against ``negatives`` z_I
    drawn from every training clip of another subject (and, ``conditional``, of the same label:
    I(z_E; z_I | y)), a low-variance estimate. T_θ learns (``train_critic``) on the stored pairs
    of its clips (``own``: all of them, or a share, see ``critic_clips``) other than the batch it
    is about to score: a closed-form q (CLUB's ridge) is fitted on all of them, another critic
    takes steps on batches of them with all of a batch's admissible pairs as marginals. So T_θ is
    never scored on pairs it was fitted on. ``dims``: z_I whitened to its first principal
    components. ``placebo``: z_I permuted across the clips (within a label when conditional),
    true MI 0 by construction: the control that separates removing identity from injecting
    noise."""

    def __init__(
        self,
        z_i: Tensor,
        subjects: Tensor,
        labels: Tensor,
        own: Tensor,
        conditional: bool = False,
        placebo: bool = False,
        dims: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        n = len(z_i)
        if not len(subjects) == len(labels) == len(own) == n:
            raise ValueError("z_i, subjects, labels and own need one entry per clip")
        self.subjects, self.labels = subjects.long(), labels.long()
        self.own, self.conditional = own.bool(), conditional
        if placebo:
            perm = torch.randperm(n, generator=generator)
            if conditional:  # within each label: the conditional MI is 0 too
                for y in self.labels.unique():
                    members = torch.nonzero(self.labels == y).flatten()
                    perm[members] = members[torch.randperm(len(members), generator=generator)]
            z_i = z_i[perm.to(z_i.device)]
        z_i = z_i.detach().float()
        if dims is not None and dims < z_i.shape[1]:  # whitened principal components of z_I
            z_i = _standardise(z_i, z_i[:0], dims)[0]
        self.z_i = z_i
        self.z_e: Tensor | None = None
        self.seen = torch.zeros(n, dtype=torch.bool)
        self.trained = False  # no MI term before T_θ has learned once

    def update(self, ids: Tensor, z_e: Tensor) -> None:
        """Store the batch's z_E (detached) as its clips' latest."""
        if self.z_e is None:
            self.z_e = z_e.new_zeros(len(self.z_i), z_e.shape[1], dtype=torch.float32)
        self.z_e[ids.to(self.z_e.device)] = z_e.detach().float()
        self.seen[ids.cpu()] = True

    def partners(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``(len(rows), len(cols))`` bool: clip ``cols[j]``'s z_I is a marginal partner of clip
        ``rows[k]``'s z_E (another subject; the same label when conditional)."""
        rows, cols = rows.cpu(), cols.cpu()
        ok = self.subjects[rows][:, None] != self.subjects[cols][None, :]
        if self.conditional:
            ok &= self.labels[rows][:, None] == self.labels[cols][None, :]
        return ok

    def train_critic(
        self,
        estimator: nn.Module,
        opt_t: torch.optim.Optimizer | None,
        steps: int,
        batch_size: int,
        generator: torch.Generator | None = None,
        sync: Callable[[nn.Module], None] | None = None,
        exclude: Tensor | None = None,
    ) -> int:
        """Up to ``steps`` updates of T_θ, each on ``batch_size`` random stored pairs of its own
        clips other than ``exclude`` (the batch about to be scored); a closed-form q is fitted
        once on all of them. Returns how many updates were taken (0 on every rank while any rank
        has fewer than ``batch_size`` such clips: ``agreed_count``)."""
        usable = self.seen & self.own
        if exclude is not None:
            usable[exclude.cpu()] = False
        ready = torch.nonzero(usable).flatten()
        if self.z_e is None or agreed_count(len(ready), self.z_i.device) < max(2, batch_size):
            return 0  # too few clips yet to learn from: no MI term
        if getattr(estimator, "closed_form", False):  # q fitted exactly on every own clip
            dev = self.z_i.device
            estimator.fit(self.z_e[ready.to(dev)], self.z_i[ready.to(dev)])
            self.trained = True
            return 1
        done = 0
        for _ in range(steps):
            idx = ready[torch.randperm(len(ready), generator=generator)[:batch_size]]
            mask = self.partners(idx, idx).to(self.z_i.device)
            if agreed_count(int(mask.any()), self.z_i.device) == 0:
                break  # no admissible marginal pair in this batch on some rank
            z_e, z_i = self.z_e[idx.to(self.z_i.device)], self.z_i[idx.to(self.z_i.device)]
            opt_t.zero_grad(set_to_none=True)
            estimator.critic_loss(
                estimator.joint_scores(z_e, z_i), estimator.pair_scores(z_e, z_i), mask
            ).backward()
            if sync is not None:
                sync(estimator)
            opt_t.step()
            done += 1
        self.trained |= done > 0
        return done

    def penalty(
        self,
        estimator: nn.Module,
        ids: Tensor,
        z_e: Tensor,
        negatives: int,
        generator: torch.Generator | None = None,
    ) -> Tensor | None:
        """The MI term of the batch's clips ``ids`` (their z_E with its gradient): T_θ's bound on
        their joint pairs against ``negatives`` random table clips as marginal partners, or None
        before T_θ has learned or when no partner is admissible."""
        if not self.trained:
            return None
        cols = torch.randperm(len(self.z_i), generator=generator)[:negatives]
        mask = self.partners(ids, cols).to(z_e.device)
        if not mask.any():
            return None
        z_i = self.z_i[ids.to(self.z_i.device)]
        return estimator.bound(
            estimator.bound_joint_scores(z_e, z_i),
            estimator.pair_scores(z_e, self.z_i[cols.to(self.z_i.device)]),
            mask,
        )


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
    log-mean-exp less biased and lift InfoNCE's ``log n`` cap), the test pairs taken in a seeded
    random order. Both variables are standardised
    with the training set's statistics (MI is invariant to that); ``dims`` first projects each
    on its first principal components (fewer dimensions than samples: the estimate is then a
    lower bound of the MI of the projections)."""
    train_x, train_y = _pairs(x_train, y_train)
    test_x, test_y = _pairs(x_test, y_test)
    if train_x.shape[1] != test_x.shape[1] or train_y.shape[1] != test_y.shape[1]:
        raise ValueError("training and test pairs must have the same dimensions")
    if len(train_x) < 2 or len(test_x) < 2:
        raise ValueError(
            f"need at least 2 training and 2 test pairs, got {len(train_x)}, {len(test_x)}"
        )
    x_tr, x_te = _standardise(train_x, test_x, dims)
    y_tr, y_te = _standardise(train_y, test_y, dims)
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
    # Test pairs in a random order: in stored order (subject by subject) the rolled marginal
    # partner of a clip is mostly a clip of the same subject, a dependent pair.
    batches = torch.randperm(n, generator=g)[: n // size * size].view(-1, size)
    with torch.no_grad():
        return float(torch.stack([est(x_te[b], y_te[b]) for b in batches]).mean())


def estimate_mi(
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    estimator: str = "mine",
    seed: int = 0,
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
    return heldout_mi(x[train], y[train], x[held_out], y[held_out], estimator, seed=seed, **options)
