"""Tests of mi.py: exact identities first, then estimates on Gaussians of known MI.

Each check is also run on a deliberately broken variant (unshuffled marginals, flipped sign, naive
log-mean-exp, moving average in linear space) and must FAIL for it.
"""

import math
from functools import cache

import pytest
import torch
import torch.nn.functional as F

import mi

NAMES = list(mi.ESTIMATORS)
LOWER_BOUNDS = ["mine", "nwj", "infonce"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Intra-op threads spin against each other on a loaded 2-core machine (measured 20x slower).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def naive_log_mean_exp(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.log(torch.exp(t).mean(dim))


# --- exact identities -----------------------------------------------------------------------


def test_log_mean_exp():
    t = torch.tensor([[0.0, 1.0], [2.0, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(mi.log_mean_exp(t, dim=1), naive_log_mean_exp(t, dim=1))
    big = torch.tensor([1000.0, 1000.0, 1000.0 + math.log(4.0)], dtype=torch.float64)
    torch.testing.assert_close(mi.log_mean_exp(big), torch.tensor(1000.0 + math.log(2.0)).double())


def test_dv_bound_hand_computed():
    t_joint = torch.tensor([1.0, 2.0, 3.0])
    t_marginal = torch.tensor([0.0, math.log(3.0)])  # mean e^T = (1 + 3) / 2
    torch.testing.assert_close(mi.dv_bound(t_joint, t_marginal), torch.tensor(2.0 - math.log(2.0)))


def check_dv_shift_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    t, m = torch.randn(32, generator=g).double(), torch.randn(32, generator=g).double()
    shifted = mi.dv_bound(t + 1000.0, m + 1000.0)
    assert torch.isfinite(shifted), shifted
    torch.testing.assert_close(shifted, mi.dv_bound(t, m))


def test_dv_bound_stable_for_large_scores():
    check_dv_shift_invariant()


def test_naive_log_mean_exp_fails_stability(monkeypatch):
    monkeypatch.setattr(mi, "log_mean_exp", naive_log_mean_exp)
    with pytest.raises(AssertionError):
        check_dv_shift_invariant()


@pytest.mark.parametrize("shift", [1, 2, 6])
def test_shift_marginal_pairs_no_sample_with_itself(shift):
    z = torch.arange(7.0)[:, None]
    shifted = mi.shift_marginal(z, shift)
    assert (shifted != z).all()
    assert sorted(shifted.squeeze(1).tolist()) == z.squeeze(1).tolist()
    if shift == 1:
        torch.testing.assert_close(shifted, torch.cat([z[1:], z[:1]]))


def test_shift_marginal_rejects_what_cannot_shuffle():
    with pytest.raises(ValueError, match="at least 2"):
        mi.shift_marginal(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="multiple"):
        mi.shift_marginal(torch.zeros(4, 3), shift=4)


def test_all_pairs_matches_forward():
    torch.manual_seed(0)
    T = mi.StatisticsNetwork(5, 3, hidden=16)
    z_e, z_i = torch.randn(6, 5), torch.randn(6, 3)
    pairs = T(z_e.repeat_interleave(6, dim=0), z_i.repeat(6, 1)).view(6, 6)
    torch.testing.assert_close(T.all_pairs(z_e, z_i), pairs)
    torch.testing.assert_close(T.all_pairs(z_e, z_i).diagonal(), T(z_e, z_i))


@pytest.mark.parametrize("name", NAMES)
def test_estimator_interface(name):
    """The train.py pattern: loss_T trains T_θ; forward is differentiable w.r.t. z_E."""
    torch.manual_seed(0)
    est = mi.build_estimator(name, 5, 3, hidden=8)
    z_e, z_i = torch.randn(16, 5, requires_grad=True), torch.randn(16, 3)
    loss = est.loss_T(z_e.detach(), z_i)
    loss.backward()
    assert loss.shape == () and all(p.grad is not None for p in est.parameters())
    value = est(z_e, z_i)
    value.backward()
    assert value.shape == () and z_e.grad is not None and torch.isfinite(z_e.grad).all()
    with pytest.raises(ValueError, match="at least 2"):
        est(z_e[:1], z_i[:1])


def test_build_estimator_unknown_name():
    with pytest.raises(ValueError, match="known: mine, nwj, infonce, club"):
        mi.build_estimator("mind", 2, 2)


def test_infonce_capped_at_log_n():
    torch.manual_seed(0)
    est = mi.InfoNCE(4, 4, hidden=8)
    with torch.no_grad():
        est.T.fc_out.weight.mul_(100.0)
    z = torch.randn(16, 4)
    assert est(z, z) <= math.log(16) + 1e-5


# --- MINE's bias-corrected gradient and moving average ------------------------------------


@pytest.mark.parametrize("marginal", mi.MARGINALS)
@pytest.mark.parametrize("training", [True, False])
def test_mine_gradient_is_dv_gradient_when_average_is_batch_mean(marginal, training):
    torch.manual_seed(0)
    est = mi.MINE(4, 3, hidden=16, marginal=marginal).train(training)
    z_e, z_i = torch.randn(12, 4), torch.randn(12, 3)
    with torch.no_grad():
        est.log_ma.copy_(mi.log_mean_exp(est.scores(z_e, z_i)[1].reshape(-1)))
    params = list(est.parameters())
    loss = est.loss_T(z_e, z_i)
    grads = torch.autograd.grad(loss, params)
    neg_dv = -est(z_e, z_i)
    for g, g_dv in zip(grads, torch.autograd.grad(neg_dv, params), strict=True):
        torch.testing.assert_close(g, g_dv)
    torch.testing.assert_close(loss, neg_dv)


def test_mine_moving_average_updates_in_training_only():
    torch.manual_seed(0)
    est = mi.MINE(4, 3, hidden=16, ema_rate=0.5)
    z_e, z_i = torch.randn(12, 4), torch.randn(12, 3)
    est.eval()
    est.loss_T(z_e, z_i)
    assert est.log_ma.isnan()  # eval: untouched
    est.train()
    est.loss_T(z_e, z_i)
    first = mi.log_mean_exp(est.scores(z_e, z_i)[1]).detach()
    torch.testing.assert_close(est.log_ma, first)  # first batch initialises it
    est.loss_T(z_e * 2, z_i)
    assert not torch.equal(est.log_ma, first) and not est.log_ma.requires_grad


class LinearAverageMINE(mi.MINE):
    """Broken: moving average of e^T kept in linear space."""

    @torch.no_grad()
    def _moving_log_mean(self, lme):
        ma = torch.where(self.log_ma.isnan(), 0.0, self.log_ma)  # log_ma holds ma itself here
        self.log_ma.copy_((1 - self.ema_rate) * ma + self.ema_rate * lme.exp())
        return self.log_ma.log()


def check_mine_large_scores(cls: type[mi.MINE]) -> None:
    torch.manual_seed(0)
    est = cls(4, 3, hidden=16)
    with torch.no_grad():
        est.T.fc_out.bias.fill_(1000.0)  # scores near 1000: e^T overflows float32
    loss = est.loss_T(torch.randn(12, 4), torch.randn(12, 3))
    assert torch.isfinite(loss) and torch.isfinite(est.log_ma), (loss, est.log_ma)


def test_mine_moving_average_in_log_space():
    check_mine_large_scores(mi.MINE)


def test_linear_moving_average_fails_large_scores():
    with pytest.raises(AssertionError):
        check_mine_large_scores(LinearAverageMINE)


# --- estimates on correlated Gaussians (true MI −d/2·log(1 − ρ²) nats) -----------------------

N = 10_000
D = 10
D_CUBIC = 4  # y³ with d = 10 needs > 2000 steps for NWJ to reach 1.2 nats (0.2 nats/dimension)
TRAIN = {"steps": 600, "batch_size": 64}


def run(name: str, true_mi: float, d: int = D, cubic: bool = False) -> float:
    x, y = mi.correlated_gaussians(N, d, true_mi, torch.Generator().manual_seed(0))
    return mi.estimate_mi(x, y**3 if cubic else y, name, **TRAIN)


estimate = cache(run)  # the correct estimators' runs are shared between tests


def check_two_nats(value: float) -> None:
    assert 1.2 <= value <= 2.3, value


@pytest.mark.parametrize("name", NAMES)
def test_zero_mi(name):
    assert abs(estimate(name, 0.0)) <= 0.1


@pytest.mark.parametrize("name", LOWER_BOUNDS)
def test_two_nats(name):
    check_two_nats(estimate(name, 2.0))


@pytest.mark.parametrize("name", LOWER_BOUNDS)
def test_two_nats_after_cubic(name):
    check_two_nats(estimate(name, 2.0, D_CUBIC, cubic=True))


@pytest.mark.parametrize("name", NAMES)
def test_estimate_increases_with_mi(name):
    values = [estimate(name, true_mi) for true_mi in (0.0, 1.0, 2.0)]
    assert values[0] < values[1] < values[2], values


def test_club_upper_bounds_mi():
    assert estimate("club", 2.0) >= 2.0


class FlippedMINE(mi.MINE):
    """Broken: T_θ minimises the bound instead of maximising it."""

    def loss_T(self, z_e, z_i):
        return -super().loss_T(z_e, z_i)


def test_unshuffled_marginals_fail(monkeypatch):
    monkeypatch.setattr(mi, "shift_marginal", lambda z, shift=1: z)
    with pytest.raises(AssertionError):
        check_two_nats(run("mine", 2.0))


def test_flipped_sign_fails(monkeypatch):
    monkeypatch.setitem(mi.ESTIMATORS, "mine", FlippedMINE)
    with pytest.raises(AssertionError):
        check_two_nats(run("mine", 2.0))


# --- MI inside training and held out, at the demo's dimensions ---------------------------------

DEMO = dict(pool=176, batch=16, d_e=256, d_i=512)  # a CK+-like fold, the demo's z_E, FaceNet z_I


def training_mi_term(
    memory: int, split: float, t_steps: int, lr_t: float, hidden: int, steps: int = 150
) -> float:
    """The MI term of train.py's loop (mi.train_critic, mi.mi_penalty) over recurring clips whose
    z_E is independent of z_I; mean over the last 50 steps."""
    g = torch.Generator().manual_seed(0)
    z_e = torch.randn(DEMO["pool"], DEMO["d_e"], generator=g)
    z_i = torch.randn(DEMO["pool"], DEMO["d_i"], generator=g)
    torch.manual_seed(0)
    est = mi.build_estimator("mine", DEMO["d_e"], DEMO["d_i"], hidden=hidden)
    opt = torch.optim.Adam(est.parameters(), lr=lr_t)
    pairs = mi.PairMemory(memory * DEMO["batch"]) if memory else None
    values: list[float] = []
    while len(values) < steps:  # epochs over the same clips, as training does
        for ids in torch.randperm(DEMO["pool"], generator=g).split(DEMO["batch"]):
            own = (
                mi.critic_clips(ids, split)
                if pairs is not None
                else torch.zeros(len(ids), dtype=torch.bool)
            )
            mi.train_critic(est, opt, z_e[ids], z_i[ids], ids, t_steps, pairs, g, critic=own)
            if int((~own).sum()) >= 2:
                with torch.no_grad():
                    values.append(mi.mi_penalty(est, est(z_e[ids][~own], z_i[ids][~own])).item())
    return sum(values[-50:]) / 50


def test_training_mi_term_is_zero_under_independence():
    """The 'memory' procedure (train.py --mi-procedure memory --estimator mine --mi-critic mlp
    --mi-hidden 512: 8 batches, half the clips T_θ's, 10 steps at 1e-3)."""
    value = training_mi_term(8, 0.5, 10, 1e-3, 512)
    assert abs(value) <= 0.15, value
    # The paper's procedure (T_θ trained on the batch it scores) reads MI where there is none:
    # the check above can fail.
    assert training_mi_term(0, 0.0, 10, 1e-3, 512) >= 0.3


def test_heldout_mi_of_evaluate_is_zero_under_independence():
    import evaluate

    g = torch.Generator().manual_seed(1)
    z_e = torch.randn(DEMO["pool"] + 20, DEMO["d_e"], generator=g)
    z_i = torch.randn(DEMO["pool"] + 20, DEMO["d_i"], generator=g)
    n = DEMO["pool"]
    value = mi.heldout_mi(z_e[:n], z_i[:n], z_e[n:], z_i[n:], **evaluate.MI_KW)
    assert abs(value) <= 0.15, value


def test_heldout_mi_of_known_mi():
    """z_E = ρ z_I + noise, 2 nats: trained on one sample, scored on another."""
    x, y = mi.correlated_gaussians(N, D, 2.0, torch.Generator().manual_seed(0))
    value = mi.heldout_mi(x[:8000], y[:8000], x[8000:], y[8000:], "mine", **TRAIN)
    check_two_nats(value)


# --- pair matrices, the clip table and its MI term ----------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_pair_matrix_bounds_equal_the_batch_estimates(name):
    """``bound`` on the pair matrix with the all-pairs mask is the estimator's own value (MINE's
    roll mask: the shifted diagonal)."""
    torch.manual_seed(0)
    est = mi.build_estimator(name, 5, 3, hidden=8)
    z_e, z_i = torch.randn(9, 5), torch.randn(9, 3)
    pairs = est.pair_scores(z_e, z_i)
    torch.testing.assert_close(pairs.diagonal(), est.joint_scores(z_e, z_i))
    mask = ~torch.eye(9, dtype=torch.bool)
    if name == "mine":
        mask = torch.roll(torch.eye(9, dtype=torch.bool), 1, dims=1)
    torch.testing.assert_close(est.bound(pairs.diagonal(), pairs, mask), est(z_e, z_i))


def test_club_pair_scores_are_gaussian_log_likelihoods():
    torch.manual_seed(0)
    est = mi.CLUB(4, 3, hidden=8)
    z_e, z_i = torch.randn(5, 4), torch.randn(6, 3)
    mu, logvar = est.mu(z_e), est.logvar(z_e)
    normal = torch.distributions.Normal(mu[:, None, :], torch.exp(0.5 * logvar)[:, None, :])
    torch.testing.assert_close(est.pair_scores(z_e, z_i), normal.log_prob(z_i[None]).sum(-1))


def test_ridge_club_fit_is_the_ridge_regression():
    g = torch.Generator().manual_seed(0)
    z_e = torch.randn(200, 6, generator=g)
    z_i = z_e[:, :2] @ torch.randn(2, 3, generator=g) + 0.1 * torch.randn(200, 3, generator=g)
    est = mi.CLUB(6, 3, critic="ridge", ridge=1e-6)
    est.fit(z_e, z_i)
    x = torch.cat([z_e, torch.ones(200, 1)], 1)
    coef = torch.linalg.lstsq(x, z_i).solution
    torch.testing.assert_close(est.mu.weight.T, coef[:6], atol=1e-4, rtol=0)
    assert not any(p.requires_grad for p in est.parameters())


def table_of(n_subjects: int, clips: int, labels_per_subject: int = 2, **kw) -> mi.ClipTable:
    subjects = torch.arange(n_subjects).repeat_interleave(clips)
    labels = (subjects + torch.arange(len(subjects)) % labels_per_subject) % 3
    z_i = torch.randn(len(subjects), 8, generator=torch.Generator().manual_seed(0))
    return mi.ClipTable(z_i, subjects, labels, torch.ones(len(subjects), dtype=torch.bool), **kw)


@pytest.mark.parametrize("conditional", [False, True])
def test_table_partners_are_other_subjects_of_the_same_label_when_conditional(conditional):
    t = table_of(5, 4, conditional=conditional)
    rows, cols = torch.arange(20), torch.arange(20)
    ok = t.partners(rows, cols)
    s, y = t.subjects, t.labels
    assert not ok[s[:, None] == s[None, :]].any()
    assert ok[(s[:, None] != s[None, :]) & (y[:, None] == y[None, :])].all()
    assert ok[y[:, None] != y[None, :]].any() != conditional


@pytest.mark.parametrize("conditional", [False, True])
def test_placebo_permutes_z_i_across_clips(conditional):
    real, placebo = table_of(5, 4), table_of(5, 4, placebo=True, conditional=conditional)
    order = [torch.nonzero((real.z_i == row).all(1)).item() for row in placebo.z_i]
    assert sorted(order) == list(range(20)) and order != list(range(20))
    if conditional:  # within each label: I(z_E; z_I | y) is 0 too
        assert (real.labels[order] == real.labels).all()


def table_game(
    dependent: bool, placebo: bool = False, steps: int = 60, joint: str = "sample"
) -> tuple[float, float]:
    """The default procedure's MI term on recurring clips whose z_E carries (or not) a linear
    copy of z_I: mean over the last steps, and the share of steps with a gradient."""
    g = torch.Generator().manual_seed(0)
    n, subjects = 176, torch.arange(176)
    z_i = torch.randn(n, 32, generator=g)
    z_e = torch.randn(n, 64, generator=g)
    if dependent:
        z_e[:, :8] += 0.7 * z_i[:, :8]
    table = mi.ClipTable(
        z_i,
        subjects,
        torch.zeros(n),
        torch.ones(n, dtype=torch.bool),
        placebo=placebo,
        dims=16,
        generator=g,
    )
    est = mi.CLUB(64, 16, critic="ridge", joint=joint)
    values = []
    while len(values) < steps:
        for ids in torch.randperm(n, generator=g).split(16):
            table.update(ids, z_e[ids])
            table.train_critic(est, None, 1, 64, exclude=ids)
            z = z_e[ids].clone().requires_grad_()
            value = table.penalty(est, ids, z, 256, g)
            if value is None:  # the first batch: q has no other clip to be fitted on yet
                continue
            value.backward()
            values.append((value.item(), float(z.grad.norm() > 0)))
    tail = torch.tensor(values[-30:])
    return float(tail[:, 0].mean()), float(tail[:, 1].mean())


@pytest.mark.parametrize("joint", mi.CLUB_JOINTS)
def test_table_mi_term_reads_dependence_and_acts(joint):
    value, active = table_game(dependent=True, joint=joint)
    assert value >= 1.0 and active == 1.0, (value, active)


@pytest.mark.parametrize("joint", mi.CLUB_JOINTS)
@pytest.mark.parametrize("placebo", [False, True])
def test_table_mi_term_is_near_zero_without_dependence(placebo, joint):
    """Independent z_E, or the placebo's permuted z_I: q is fitted on every clip but the batch it
    scores, so it reads no dependence that is not there (dependent: about 2.7 nats)."""
    value, _ = table_game(dependent=placebo, placebo=placebo, joint=joint)
    assert abs(value) <= 0.5, value


def minimised_club(joint: str, steps: int = 300) -> tuple[float, float]:
    """Gradient descent on a batch's z_E against a q fitted once (a q that lags the encoder):
    the final estimate, and how far q's prediction from z_E ends from z_I's mean (in q's metric;
    0: z_E shows q no identity)."""
    g = torch.Generator().manual_seed(0)
    z_i = torch.randn(400, 8, generator=g)
    z_e = torch.cat([z_i, torch.randn(400, 8, generator=g)], 1)  # z_E carries a copy of z_I
    est = mi.CLUB(16, 8, critic="ridge", joint=joint)
    est.fit(z_e[16:], z_i[16:])
    z = z_e[:16].clone().requires_grad_()
    opt = torch.optim.SGD([z], lr=0.05)
    for _ in range(steps):
        value = est.bound(
            est.bound_joint_scores(z, z_i[:16]),
            est.pair_scores(z, z_i[16:]),
            torch.ones(16, 384, dtype=torch.bool),
        )
        opt.zero_grad()
        value.backward()
        opt.step()
    with torch.no_grad():
        off = (est.mu(z) - z_i[16:].mean(0)) ** 2 * torch.exp(-est.log_sigma2)
    return value.item(), off.sum(1).mean().sqrt().item()


def test_expected_club_cannot_be_driven_below_zero_by_anti_prediction():
    """The sample form is linear in z_E for a fixed q: minimising it drives z_E to predict z_I's
    opposite and the estimate without bound below 0. The expected form ends where q predicts z_I's
    mean, at a value above 0 (what q's fit explains of z_I, a constant for z_E)."""
    sample, sample_off = minimised_club("sample")
    expected, expected_off = minimised_club("expected")
    assert sample < -50 and sample_off > 10, (sample, sample_off)  # anti-prediction
    assert expected > 0 and expected_off < 0.1, (expected, expected_off)


def ridge_club_reading(ridge: float, scale: float) -> float:
    """CLUB's reading, a ridge q fitted on 384 clips and scored on 16 others, of a z_E that holds a
    copy of z_I times ``scale`` beside 56 dimensions of unit variance."""
    g = torch.Generator().manual_seed(0)
    z_i = torch.randn(400, 8, generator=g)
    z_e = torch.cat([scale * z_i, torch.randn(400, 56, generator=g)], 1)
    est = mi.CLUB(64, 8, critic="ridge", ridge=ridge)
    est.fit(z_e[16:], z_i[16:])
    mask = torch.ones(16, 384, dtype=torch.bool)
    return float(
        est.bound(est.joint_scores(z_e[:16], z_i[:16]), est.pair_scores(z_e[:16], z_i[16:]), mask)
    )


def test_a_small_ridge_sees_identity_the_encoder_has_shrunk():
    """MI does not change when z_E's identity directions shrink, but a ridge relative to z_E's
    mean eigenvalue stops seeing them once their variance falls below it: the encoder could lower
    the term by shrinking identity rather than removing it. A ridge of 0.001 still reads the copy
    at a tenth of the scale (variance 0.01), where train.py's default 0.1 reads almost none."""
    assert ridge_club_reading(0.1, 1.0) > 5 and ridge_club_reading(0.001, 1.0) > 5
    assert ridge_club_reading(0.001, 0.1) > 5
    assert ridge_club_reading(0.1, 0.1) < 0.5 * ridge_club_reading(0.001, 0.1)


def test_club_rejects_an_unknown_joint_term():
    with pytest.raises(ValueError, match="joint term"):
        mi.CLUB(4, 4, joint="mean")


def test_table_mi_term_fitted_on_the_scored_clips_reads_dependence_everywhere(monkeypatch):
    """The broken variant: q fitted on the batch it scores too reads several nats of MI in
    independent data (in-sample fit), so the check above can fail."""
    fit = mi.ClipTable.train_critic
    monkeypatch.setattr(
        mi.ClipTable, "train_critic", lambda self, *a, exclude=None, **k: fit(self, *a, **k)
    )
    with pytest.raises(AssertionError):
        test_table_mi_term_is_near_zero_without_dependence(False, "sample")


def test_agreed_count_without_distributed_is_the_count():
    assert mi.agreed_count(3) == 3


def label_coupled_term(conditional: bool) -> float:
    """z_E knows only the label; the label follows the subject's appearance group, and so does
    z_I (the synthetic set's --label-coupling 1). Mean MI term over 20 batches."""
    g = torch.Generator().manual_seed(0)
    subjects = torch.arange(60).repeat_interleave(3)
    group = subjects % 3
    labels = 2 * group + torch.randint(0, 2, (180,), generator=g)
    z_i = 2.0 * F.one_hot(group, 8).float() + torch.randn(60, 8, generator=g)[subjects]
    z_e = 2.0 * F.one_hot(labels, 16).float() + 0.5 * torch.randn(180, 16, generator=g)
    table = mi.ClipTable(
        z_i,
        subjects,
        labels,
        torch.ones(180, dtype=torch.bool),
        conditional=conditional,
        generator=g,
    )
    table.update(torch.arange(180), z_e)
    est = mi.CLUB(16, 8, critic="ridge")
    values = []
    for ids in torch.randperm(180, generator=g).split(9)[:20]:
        table.train_critic(est, None, 1, 64, exclude=ids)
        values.append(table.penalty(est, ids, z_e[ids], 256, g).item())
    return sum(values) / len(values)


def test_conditional_term_spares_label_information_shared_with_identity():
    """Unconditional MI minimisation would take the label with the identity here; I(z_E; z_I | y)
    reads nothing to remove."""
    assert label_coupled_term(conditional=False) >= 1.0  # measured 1.36
    assert abs(label_coupled_term(conditional=True)) <= 0.3  # measured −0.26


def test_heldout_mi_reads_subject_ordered_test_pairs_as_shuffled_ones():
    """Test clips come subject by subject: rolled in that order, a clip's marginal partner is a
    clip of the same subject, whose z_I is close to its own. 1 nat planted in z_E, z_I
    clustered by subject: the estimate must not depend on the order of the test pairs."""
    g = torch.Generator().manual_seed(0)
    subjects, clips, d = 150, 4, 4
    appearance = torch.randn(subjects, d, generator=g).repeat_interleave(clips, 0)
    z_i = 0.9 * appearance + math.sqrt(1 - 0.81) * torch.randn(subjects * clips, d, generator=g)
    rho = mi.gaussian_rho(1.0, d)
    z_e = rho * z_i + math.sqrt(1 - rho**2) * torch.randn(subjects * clips, d, generator=g)
    n = 100 * clips  # 100 training subjects, 50 test subjects stored in order
    kw = dict(steps=300, hidden=32, lr=1e-3)
    ordered = mi.heldout_mi(z_e[:n], z_i[:n], z_e[n:], z_i[n:], **kw)
    perm = torch.randperm(len(z_e) - n, generator=g) + n
    shuffled = mi.heldout_mi(z_e[:n], z_i[:n], z_e[perm], z_i[perm], **kw)
    assert shuffled > 0.4, shuffled
    assert abs(ordered - shuffled) < 0.15, (ordered, shuffled)


def test_ridge_club_fit_in_the_dual_form_is_the_primal_one():
    """Fewer clips than z_E dimensions (the paper's 2048-d z_E on a CK+ fold) take the n × n
    system; same q."""
    g = torch.Generator().manual_seed(0)
    z_e, z_i = torch.randn(30, 50, generator=g), torch.randn(30, 4, generator=g)
    dual, primal = mi.CLUB(50, 4, critic="ridge"), mi.CLUB(50, 4, critic="ridge")
    dual.fit(z_e, z_i)
    # every clip twice: 60 > 50 rows take the primal form, and the same ridge regression (the
    # scatter and its penalty both double)
    primal.fit(torch.cat([z_e, z_e]), torch.cat([z_i, z_i]))
    torch.testing.assert_close(dual.mu.weight, primal.mu.weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dual.mu.bias, primal.mu.bias, atol=1e-4, rtol=1e-4)
