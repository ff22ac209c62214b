"""train.py's options: the command line (`parse_args`, with the checks that refuse what cannot
make a sensible run), the learning-rate schedule, the variant's name and the record of the options
a checkpoint and result.json keep."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mi
from datasets import PROTOCOLS, SPECS
from models import DEFAULT_IDENTITY, IDENTITY_DIMS

# Options that may differ when a run is resumed (everything else must match its checkpoint).
RESUMABLE = ("epochs", "workers", "cache", "device", "resume", "fold", "out", "root")


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """The options of a run (`description`: the --help text), checked and completed with
    their defaults (per dataset, identity network, variant name)."""
    p = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawTextHelpFormatter,
        fromfile_prefix_chars="@",
    )
    p.convert_arg_line_to_args = args_of_line
    p.add_argument("--dataset", required=True, choices=sorted(SPECS))
    p.add_argument("--root", help="indexed data folder (default: data/<dataset>)")
    p.add_argument(
        "--fold",
        action="append",
        help="test fold(s) of the protocol (repeatable; default: all): 0..9 for "
        "CK+/MMI/synthetic, 1..5 for DFEW/MAFW (datasets.PROTOCOLS)",
    )
    p.add_argument("--out", default="runs/mic", help="run folder; the variant is a subfolder")
    p.add_argument("--name", help="variant name (default: derived from the options)")
    # objective
    p.add_argument("--alpha", type=float, default=0.1, help="weight of the MI term (or adversary)")
    p.add_argument("--beta", type=float, default=0.1, help="weight of the reconstruction term")
    p.add_argument(
        "--estimator",
        default="club",
        choices=sorted(mi.ESTIMATORS),
        help="the MI estimate the encoder minimises: CLUB's upper bound (default) or "
        "a lower bound (MINE, the paper's; NWJ; InfoNCE), floored at 0",
    )
    p.add_argument(
        "--mi-procedure",
        default="table",
        choices=mi.PROCEDURES,
        help="how T_θ learns and what the MI term scores: 'table' (default: T_θ on "
        "its own share of the training clips, the MI term on the others against "
        "--mi-negatives partners from every training clip), 'memory' (T_θ on "
        "recent batches of its clips, the MI term on the batch's others), "
        "'paper' (T_θ on the batch it scores)",
    )
    p.add_argument(
        "--mi-critic",
        choices=mi.CRITIC_NAMES,
        help="T_θ's form: for MINE, NWJ, InfoNCE 'mlp' (default, the "
        "reproduction's) or 'separable' g(z_E)·h(z_I); for CLUB's q(z_I | z_E) "
        "'ridge' (default: linear-Gaussian, fitted in closed form on T_θ's "
        "clips every step), 'linear' (the same by gradient steps) or 'mlp'",
    )
    p.add_argument(
        "--t-steps",
        type=int,
        default=10,
        help="T_θ updates per encoder update (benchmarks/mi_game.py)",
    )
    p.add_argument(
        "--mi-memory",
        type=int,
        default=8,
        help="'memory' procedure: T_θ's memory of recent pairs, in batches",
    )
    p.add_argument(
        "--mi-split",
        type=float,
        help="share of the training clips reserved for T_θ, the MI term computed on "
        "the others only (default: 0.5 with 'memory'; 0 with 'table': T_θ "
        "learns on every clip's latest z_E and the MI term scores every clip)",
    )
    p.add_argument(
        "--mi-ridge",
        type=float,
        default=0.1,
        help="CLUB's ridge q: penalty × the mean eigenvalue of z_E's scatter (the encoder can "
        "hide identity from a larger one by shrinking its directions; docs/mi.md)",
    )
    p.add_argument(
        "--club-joint",
        choices=mi.CLUB_JOINTS,
        default="sample",
        help="CLUB's joint term: each clip's log q(z_I | z_E) ('sample', Cheng et al.'s) or "
        "its expectation under q ('expected': no sign the encoder can anti-predict)",
    )
    p.add_argument(
        "--mi-negatives",
        type=int,
        default=256,
        help="'table': marginal partners of the MI term per step",
    )
    p.add_argument("--mi-batch", type=int, default=64, help="'table': T_θ's batch of pairs")
    p.add_argument(
        "--mi-dims",
        type=int,
        default=16,
        help="'table': T_θ sees z_I's first principal components (whitened); 0: all",
    )
    p.add_argument("--mi-weight-decay", type=float, default=0.01, help="T_θ's weight decay")
    p.add_argument(
        "--mi-placebo",
        action="store_true",
        help="control: the MI term with z_I permuted across the clips (true MI 0); "
        "the decoder keeps the real z_I ('table')",
    )
    p.add_argument(
        "--mi-conditional",
        action="store_true",
        help="I(z_E; z_I | y): marginal partners of the same label and another subject ('table')",
    )
    p.add_argument("--lr-t", type=float, default=1e-3, help="T_θ's learning rate (constant)")
    p.add_argument(
        "--mi-hidden",
        type=int,
        default=512,
        help="width of T_θ (the separable critic's rank; not used by the ridge q)",
    )
    p.add_argument("--no-mi", action="store_true", help="MIC−MI: no MI term in the loss")
    p.add_argument(
        "--adv",
        action="store_true",
        help="identity adversary behind gradient reversal: f_E gets its reversed "
        "gradient × --alpha",
    )
    p.add_argument(
        "--adv-conditional",
        action="store_true",
        help="the adversary also sees the label y (identity left once y is known)",
    )
    p.add_argument(
        "--lr-adv",
        type=float,
        default=1e-3,
        help="the adversary's own learning rate (constant; apart from --alpha)",
    )
    p.add_argument("--no-rec", action="store_true", help="MIC−Î: no reconstruction term")
    p.add_argument("--with-mv", action="store_true", help="MIC+T^t: add a motion-vector branch")
    p.add_argument(
        "--accumulate",
        action="store_true",
        help="residuals and vectors against the I-frame (pytorch-coviar's default) "
        "instead of the previous frame (the paper's Δ^t)",
    )
    p.add_argument(
        "--baseline",
        choices=["rgb"],
        help="rgb: the paper's RGB baseline (Mode VLSTM): decoded frames → CNN → LSTM "
        "→ classifier, no MI, no reconstruction, no identity branch",
    )
    p.add_argument(
        "--class-weights",
        action="store_true",
        help="weight L_CE by inverse class frequency (imbalanced sets: DFEW, MAFW, ...)",
    )
    # model
    p.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet18", "resnet6"])
    p.add_argument(
        "--backbone-weights",
        help="'imagenet' (torchvision's, downloaded once into torch's hub cache) or an "
        "ImageNet state-dict file",
    )
    p.add_argument("--hidden", type=int, default=512, help="LSTM size")
    p.add_argument(
        "--identity",
        choices=sorted(IDENTITY_DIMS),
        help="identity network f_I (default: the one the weights are for; "
        f"{DEFAULT_IDENTITY[0]} when no weights are named)",
    )
    p.add_argument(
        "--identity-weights",
        help=f"weights of f_I: a name ({DEFAULT_IDENTITY[1]} (default, offline), "
        "vggface2, casia-webface, facenet-mobilenet), a file, 'random' (on "
        "purpose), or 'pretrain' (synthetic set: train it on the set's identities)",
    )
    p.add_argument(
        "--identity-size",
        type=int,
        help="letterboxed input side of f_I (160: the published weights; default "
        "80 for the synthetic set's own pretraining)",
    )
    p.add_argument("--num-segments", type=int, default=8)
    p.add_argument("--size", type=int, default=112, help="input side (224: the paper's)")
    # optimisation
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", help="'epoch:lr,...' step schedule (default per dataset)")
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--cache",
        help="folder for a cache of decoded clips and of z_I (speeds up "
        "repeated runs on the same clips)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run found in --out")
    p.add_argument(
        "--validate",
        action="store_true",
        help="model selection: each split trains on its training folds but one and "
        "tests on that one (folder <split>-val); its test fold stays unseen",
    )
    p.add_argument("--max-steps", type=int, help="steps per epoch at most (smoke runs)")
    p.add_argument("--synthetic-subjects", type=int, default=40, help="size of a generated set")
    p.add_argument("--pretrain-epochs", type=int, default=6, help="identity pretraining epochs")
    args = p.parse_args(argv)
    check_args(p, args)
    if args.baseline == "rgb":
        args.no_mi = args.no_rec = True
    if args.identity_weights is None:
        args.identity_weights = DEFAULT_IDENTITY[1]
    if args.identity_size is None:  # our own pretraining on 128-px synthetic faces: 80 px
        args.identity_size = 80 if args.identity_weights == "pretrain" else 160
    for key, value in SPECS[args.dataset].defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.root = Path(args.root or f"data/{args.dataset}")
    args.out = Path(args.out)
    args.name = args.name or variant_name(args)
    return args


def args_of_line(line: str) -> list[str]:
    """The arguments of one line of an `@FILE` of options (configs/*.args): split on white space,
    from a `#` on a comment."""
    return line.split("#", 1)[0].split()


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any work, the values that cannot make a sensible run."""
    positive = {
        "--epochs": args.epochs,
        "--batch-size": args.batch_size,
        "--num-segments": args.num_segments,
        "--size": args.size,
        "--hidden": args.hidden,
        "--mi-hidden": args.mi_hidden,
        "--lr": args.lr,
        "--mi-ridge": args.mi_ridge,
        "--lr-t": args.lr_t,
        "--max-steps": args.max_steps,
    }
    for flag, value in positive.items():
        if value is not None and not value > 0:
            p.error(f"{flag} must be > 0, got {value}")
    if args.batch_size < 2:
        p.error(
            f"--batch-size must be at least 2 (the MI bound pairs clips), got {args.batch_size}"
        )
    for flag, value in {
        "--alpha": args.alpha,
        "--beta": args.beta,
        "--weight-decay": args.weight_decay,
        "--workers": args.workers,
        "--mi-memory": args.mi_memory,
    }.items():
        if not value >= 0:
            p.error(f"{flag} must be >= 0, got {value}")
    if args.t_steps < 1 and not (args.no_mi or args.baseline):
        p.error(f"--t-steps must be >= 1 with an MI term (T_θ must learn), got {args.t_steps}")
    if args.mi_split is None:
        args.mi_split = 0.0 if args.mi_procedure == "table" else 0.5
    if not 0 <= args.mi_split < 1:
        p.error(f"--mi-split must be in [0, 1), got {args.mi_split}")
    for flag, value in {"--mi-negatives": args.mi_negatives, "--mi-batch": args.mi_batch}.items():
        if not value >= 2:
            p.error(f"{flag} must be at least 2, got {value}")
    if args.mi_dims < 0:
        p.error(f"--mi-dims must be >= 0, got {args.mi_dims}")
    if (args.mi_placebo or args.mi_conditional) and args.mi_procedure != "table":
        p.error("--mi-placebo and --mi-conditional need --mi-procedure table")
    club = args.estimator == "club"
    if args.mi_critic is None:
        args.mi_critic = ("ridge" if args.mi_procedure == "table" else "linear") if club else "mlp"
    if args.mi_critic == "ridge" and args.mi_procedure != "table":
        p.error("--mi-critic ridge is fitted on the table: it needs --mi-procedure table")
    if (args.mi_critic in ("linear", "ridge")) != club and args.mi_critic != "mlp":
        p.error(
            f"--mi-critic {args.mi_critic} is not a critic of --estimator {args.estimator}: "
            "CLUB takes mlp, linear or ridge; MINE, NWJ and InfoNCE take mlp or separable"
        )
    folds = [s.test[0] for s in PROTOCOLS[args.dataset]]
    bad = [f for f in args.fold or [] if f not in folds]
    if bad:
        p.error(f"--fold {', '.join(bad)}: {args.dataset} has the test folds {', '.join(folds)}")
    if args.adv_conditional and not args.adv:
        p.error("--adv-conditional is an option of the adversary: add --adv")
    if args.baseline and (args.adv or args.with_mv):
        p.error("--baseline rgb is the plain RGB model: no --adv, no --with-mv")
    if args.name is not None and (args.name in ("", ".", "..") or "/" in args.name):
        p.error(
            f"--name {args.name!r}: a variant name is one folder name inside --out (no '/', "
            "not '.' or '..')"
        )
    if args.schedule is not None:
        try:
            parse_schedule(args.schedule)
        except ValueError as exc:
            p.error(f"--schedule {args.schedule!r}: {exc}")


def parse_schedule(schedule: str) -> list[tuple[int, float]]:
    """The steps of a schedule 'e1:lr1,e2:lr2' as (epoch, lr) sorted by epoch; `ValueError`
    naming the first step that is not an integer epoch >= 0, a colon and a finite rate > 0."""
    steps: dict[int, float] = {}
    for step in (s for s in schedule.split(",") if s):
        epoch, _, rate = step.partition(":")
        try:
            e, r = int(epoch), float(rate)
        except ValueError:
            e, r = -1, math.nan
        if e < 0 or not (r > 0 and math.isfinite(r)):
            raise ValueError(
                f"step {step!r} is not EPOCH:LR (an integer epoch >= 0, a finite "
                "learning rate > 0), e.g. 30:1e-4"
            )
        if e in steps:
            raise ValueError(f"epoch {e} is given twice")
        steps[e] = r
    return sorted(steps.items())


def lr_at(epoch: int, lr: float, schedule: str) -> float:
    """Learning rate of `epoch` under a step schedule 'e1:lr1,e2:lr2' (lr until e1, ...)."""
    for start, rate in parse_schedule(schedule):
        if epoch >= start:
            lr = rate
    return lr


def variant_ablation(options: Mapping[str, Any]) -> str:
    """The row of the paper's table that a run's options make (mic, mic-mi, mic-mi+adv, mic+mv,
    rgb, ...), whatever its backbone: `options` as result.json stores them (`options_record`),
    those it lacks (runs older than an option) taken as not given."""
    on = options.get
    if on("baseline") == "rgb":
        return "rgb"
    name = "mic" + ("-mi" if on("no_mi") else "") + ("+adv" if on("adv") else "")
    name += "+placebo" if on("mi_placebo") else ""
    name += "+cond" if on("mi_conditional") or on("adv_conditional") else ""
    return name + ("-rec" if on("no_rec") else "") + ("+mv" if on("with_mv") else "")


def variant_name(args: argparse.Namespace) -> str:
    """The default variant name: its row of the paper's table (`variant_ablation`), with the
    backbone when not ResNet50 (mic, mic-mi+resnet6, ...)."""
    return variant_ablation(vars(args)) + (
        "" if args.backbone == "resnet50" else f"+{args.backbone}"
    )


def options_record(args: argparse.Namespace) -> dict:
    """The run's options as JSON values (stored in the checkpoint and result.json)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())}
