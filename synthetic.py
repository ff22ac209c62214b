"""Synthetic CK+: face videos written in the real CK+ raw layout (the embedded demo dataset).

Each subject is a parametric cartoon face (shape, skin, hair, eyes, brows, nose, mouth,
glasses, beard, moles...) that performs a subset of the 7 CK+ expressions as PNG sequences
going from neutral to apex (apex = last frame), driven by action-unit-like deformations.
Identity leaks into the frame-to-frame changes (the residuals) as it does in real faces:
every subject expresses with its own style (gain, asymmetry, onset curve, a personal
"signature" of extra action units) and has its own idiosyncratic motion (blink rate, head
nod, a tic). Head motion, lighting drift and sensor noise are added on top.

Layout written under ROOT (exactly CK+'s, plus the identity set and a provenance file)::

    cohn-kanade-images/S005/001/S005_001_00000001.png ...   frames, numbered from 1
    Emotion/S005/001/S005_001_00000017_emotion.txt          "   3.0000000e+00\\n" (code 1..7)
    identities/P001/001.png ...                               disjoint identities, no labels
    synthetic.json                                            config + summary

CK+ quirks reproduced on purpose: subject ids are not contiguous, ``config.unlabelled``
extra sequences have frames but no emotion file (the first of them has an empty
``Emotion/Sxxx/yyy`` folder, as some CK+ sequences do) and a stray ``.DS_Store`` file sits
in the first subject's image folder.

Run ``python synthetic.py --help``; ``generate()`` is the library entry point.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.special import ndtr, ndtri
from tqdm import tqdm

EMOTIONS = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
"""CK+ emotion codes 1..7 (0, neutral, is never a sequence label)."""

AUS = ("1", "2", "4", "5", "6", "7", "9", "10", "12", "14", "15", "17", "20", "24", "25", "26")
"""Action units that drive the face (FACS numbering)."""
_A = {name: i for i, name in enumerate(AUS)}

# Apex action units of each emotion (EMFACS-like prototypes; contempt is one-sided), in the
# units of the drawing: 1 is a clear action, 2 a strong one (CK+ expressions are posed).
_PROTOTYPES = {
    "anger": {"4": 2.25, "5": 0.675, "7": 1.35, "17": 0.675, "24": 1.95},
    "contempt": {"12": 1.35, "14": 1.8},
    "disgust": {"4": 0.9, "6": 0.675, "9": 2.25, "10": 1.8, "15": 0.675, "17": 0.675},
    "fear": {"1": 1.8, "2": 1.125, "4": 1.125, "5": 1.95, "20": 1.95, "25": 1.5, "26": 0.6},
    "happy": {"6": 1.8, "12": 2.25, "25": 1.125},
    "sadness": {"1": 1.95, "4": 1.125, "7": 0.45, "15": 1.95, "17": 1.125},
    "surprise": {"1": 2.25, "2": 2.25, "5": 1.8, "25": 1.8, "26": 2.25},
}
# How often each emotion is chosen for a subject, after CK+'s label counts.
_EMOTION_WEIGHTS = np.array([45, 18, 59, 25, 69, 28, 83], dtype=float)
_TICS = ("brow_flash", "twitch", "lip_press", "nose", "jaw", "squint")
_TIC_AUS = {
    "brow_flash": ("1", "2"),
    "twitch": ("12", "6"),
    "lip_press": ("24",),
    "nose": ("9",),
    "jaw": ("26", "25"),
    "squint": ("7",),
}
_SKIN = np.array(
    [[255, 226, 200], [236, 196, 164], [205, 152, 118], [150, 100, 70], [98, 64, 45]], dtype=float
)
_HAIR = np.array(
    [[25, 22, 22], [60, 40, 30], [110, 75, 45], [200, 165, 100], [150, 60, 30], [170, 170, 170]],
    dtype=float,
)
_STREAM_SUBJECTS, _STREAM_IDENTITIES, _STREAM_PLAN = 0, 1, 2
CKPLUS_EXPRESSIONS = 327 / 118
"""Labelled sequences per subject in CK+ (327 over 118 subjects)."""


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate and how hard it is.

    Difficulty knobs (0 switches an effect off; the README gives the accuracy measured by
    `make demo`): ``intensity`` scales every apex; ``intensity_jitter`` is the log-sd of a
    per-sequence apex factor (some sequences come out subtle); ``variability`` is how
    differently subjects perform the same emotion (log-sd of per-subject action-unit weights
    plus cross-talk into other units); ``style`` scales the identity style (gain, asymmetry,
    onset curve, signature units, nod and tic; 0 also stops blinks); ``head_motion`` and
    ``lighting`` scale pose offset/drift/jitter and illumination offset/drift/flicker;
    ``noise`` is the sd of the Gaussian pixel noise in grey levels.

    Identity knobs: ``coupling`` (c, 0..1) is how much each person's style and version of
    each emotion follow from their appearance (`coupled_style`; 0: drawn independently of
    it, 1: a fixed function of it plus a little noise); ``expressions`` is the mean number of
    labelled sequences per subject drawn as in CK+ (`label_plan`: 1 + Poisson, class totals
    in CK+'s proportions, truncated to ``min_expressions..max_expressions``); 0 draws
    ``min_expressions..max_expressions`` emotions per subject, uniformly many, weighted by
    CK+'s class counts, independently per subject (the set before the skew knob);
    ``label_coupling`` (L, 0..1) is the probability that a subject shows exactly the emotions
    of its appearance group instead (`LABEL_GROUPS`, by skin tone: the neutral face predicts
    the label; 0: the draw above, 1: every subject).
    """

    subjects: int = 40
    id_subjects: int = 40
    id_images: int = 20
    seed: int = 0
    size: int = 128
    min_frames: int = 10
    max_frames: int = 30
    min_expressions: int = 1
    max_expressions: int = 7
    expressions: float = CKPLUS_EXPRESSIONS
    coupling: float = 1.0
    coupled_style: float = 1.0
    label_coupling: float = 0.0
    unlabelled: int = 2
    intensity: float = 1.0
    intensity_jitter: float = 0.2
    variability: float = 0.3
    style: float = 1.0
    head_motion: float = 1.0
    lighting: float = 1.0
    noise: float = 1.0

    def __post_init__(self) -> None:
        if self.size % 2 or self.size < 32:
            raise ValueError(f"size must be even and >= 32, got {self.size}")
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError("need 2 <= min_frames <= max_frames")
        if not 1 <= self.min_expressions <= self.max_expressions <= len(EMOTIONS):
            raise ValueError("need 1 <= min_expressions <= max_expressions <= 7")
        if self.expressions and not (
            self.min_expressions <= self.expressions <= self.max_expressions
        ):
            raise ValueError(
                "expressions (the mean per subject) must be 0 or lie in "
                f"min_expressions..max_expressions, got {self.expressions}"
            )
        if not 0 <= self.coupling <= 1:
            raise ValueError(f"coupling must lie in [0, 1], got {self.coupling}")
        if self.coupled_style < 0:
            raise ValueError(f"coupled_style must be >= 0, got {self.coupled_style}")
        if not 0 <= self.label_coupling <= 1:
            raise ValueError(f"label_coupling must lie in [0, 1], got {self.label_coupling}")
        if self.label_coupling and not (self.min_expressions <= 2 and self.max_expressions >= 3):
            raise ValueError(
                "label_coupling needs min_expressions <= 2 <= 3 <= max_expressions "
                "(an appearance group shows 2 or 3 emotions)"
            )
        if self.subjects < 1 or self.id_subjects < 0 or self.id_images < 1:
            raise ValueError("need subjects >= 1, id_subjects >= 0, id_images >= 1")
        if not 0 <= self.unlabelled <= self.subjects:
            raise ValueError("need 0 <= unlabelled <= subjects")


@dataclass
class Identity:
    """One person: face geometry, colours, accessories and expressive style."""

    geo: dict[str, float]
    colors: dict[str, tuple[int, int, int]]
    hair: int  # 0 bald, 1 short, 2 long, 3 fringe, 4 curly, 5 buzz cut
    beard: int  # 0 none, 1 stubble, 2 full, 3 goatee, 4 moustache
    glasses: int  # 0 none, 1 round, 2 rectangular
    moles: np.ndarray  # (k, 3): x, y, radius
    freckles: np.ndarray  # (k, 2)
    age: float  # depth of static wrinkles, 0..1
    gain: float  # expression amplitude
    asym: float  # > 0: the image-right half moves more
    gamma: float  # onset curve exponent
    lead: float  # fraction of the clip that stays neutral
    reach: float  # fraction of the ramp after which the apex is held
    signature: np.ndarray  # (n_aus,) extra units mixed into every expression
    side: int  # contempt side, 0 image-left, 1 image-right
    blink_period: float  # frames between blinks
    nod_amp: float  # head nod amplitude (fraction of the image)
    nod_period: float  # frames
    tic: str
    tic_amp: float
    tic_period: float  # frames
    tic_side: int
    gaze: tuple[float, float]
    part: int  # side of the hair parting (appearance; equals tic_side when uncoupled)
    protos: np.ndarray = field(repr=False)  # (7, n_aus) this person's version of each emotion


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))  # type: ignore[return-value]


def sample_identity(rng: np.random.Generator, cfg: SyntheticConfig) -> Identity:
    """Draw a random person (geometry and colours are independent of the difficulty knobs)."""
    u = rng.uniform
    w = u(0.84, 1.0)
    h = u(1.2, 1.38)
    geo = {
        "w": w,
        "h": h,
        "jaw": u(0.08, 0.35),
        "eye_x": u(0.36, 0.44),
        "eye_y": u(-0.12, 0.0),
        "eye_w": u(0.14, 0.185),
        "eye_h": u(0.06, 0.085),
        "tilt": u(-0.02, 0.035),
        "iris": u(0.058, 0.07),
        "brow_gap": u(0.17, 0.25),
        "brow_t": u(0.025, 0.06),
        "brow_arch": u(0.01, 0.07),
        "nose_y": u(0.28, 0.4),
        "nose_w": u(0.1, 0.17),
        "mouth_y": u(0.62, 0.72),
        "mouth_w": u(0.24, 0.33),
        "lip_up": u(0.03, 0.055),
        "lip_lo": u(0.04, 0.075),
    }
    geo["mouth_y"] = min(geo["mouth_y"], h - 0.45)
    t = u(0, len(_SKIN) - 1)
    skin = _SKIN[int(t)] + (t % 1) * (_SKIN[min(int(t) + 1, len(_SKIN) - 1)] - _SKIN[int(t)])
    skin = skin * u(0.95, 1.05, 3)
    hair_c = _HAIR[rng.integers(len(_HAIR))] * u(0.85, 1.15)
    lips = skin * [0.82, 0.62, 0.62] + [30, 0, 5]
    if rng.random() < 0.2:  # lipstick
        lips = np.array([u(150, 200), u(20, 60), u(40, 80)])
    bg = rng.uniform(120, 220) + rng.normal(0, 12, 3)
    colors = {
        "skin": _rgb(skin),
        "hair": _rgb(hair_c),
        "brow": _rgb(hair_c * 0.8),
        "iris": _rgb(
            rng.choice([[70, 45, 25], [110, 75, 40], [70, 110, 150], [80, 120, 70], [40, 30, 25]])
            * u(0.85, 1.15)
        ),
        "lips": _rgb(lips),
        "shirt": _rgb(rng.uniform(20, 230, 3)),
        "bg_top": _rgb(bg),
        "bg_bottom": _rgb(bg * u(0.75, 0.95)),
        "glasses": _rgb(rng.choice([[20, 20, 20], [90, 60, 30], [160, 160, 170]])),
    }
    n_moles = rng.integers(0, 3)
    moles = np.column_stack([u(-0.6, 0.6, n_moles), u(-0.6, 0.9, n_moles), u(0.012, 0.02, n_moles)])
    freckles = (
        np.column_stack([u(-0.6, 0.6, 18), u(0.05, 0.45, 18)])
        if rng.random() < 0.15
        else np.zeros((0, 2))
    )
    s = cfg.style
    signature = np.zeros(len(AUS))
    signature[rng.choice(len(AUS), 2, replace=False)] = u(0.225, 0.45, 2) * s
    protos = np.zeros((len(EMOTIONS), len(AUS)))
    v = cfg.variability
    for k, name in enumerate(EMOTIONS):
        for au, val in _PROTOTYPES[name].items():
            protos[k, _A[au]] = val * np.exp(rng.normal(0, v))
        protos[k] += np.abs(rng.normal(0, 0.18 * v, len(AUS))) * (rng.random(len(AUS)) < 0.3)
    ident = Identity(
        geo=geo,
        colors=colors,
        hair=int(rng.integers(6)),
        beard=int(rng.choice(5, p=[0.6, 0.1, 0.12, 0.09, 0.09])),
        glasses=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
        moles=moles,
        freckles=freckles,
        age=u(0, 1),
        gain=float(np.exp(rng.normal(0, 0.125 * s))),
        asym=float(np.clip(rng.normal(0, 0.125 * s), -0.6, 0.6)),
        gamma=float(np.exp(rng.normal(0, 0.225 * s))),
        lead=u(0, 0.175 * s),
        reach=1 - u(0, 0.2 * s),
        signature=signature,
        side=int(rng.integers(2)),
        blink_period=u(15, 80),
        nod_amp=u(0.000125, 0.0005) * s,
        nod_period=u(10, 30),
        tic=str(rng.choice(_TICS)),
        tic_amp=u(0.125, 0.25) * s,
        tic_period=u(6, 14),
        tic_side=int(rng.integers(2)),
        gaze=(u(-0.5, 0.5), u(-0.3, 0.3)),
        part=0,
        protos=protos,
    )
    ident.part = ident.tic_side
    return ident


# ----------------------------------------------------------------------------- coupling
# How a person's style follows from their appearance. Every style quantity (and every entry
# of the person's version of each emotion) is driven by one standard-normal latent z_k,
#     z_k = λ·ρ·g_k(a) + sqrt(1 − ρ²)·ε_k,   ρ = c·sqrt(1 − η²),
# where a is the appearance vector (`appearance`), g_k(a) = Φ⁻¹(F_k(w_k·ā)) a fixed random
# linear read-out w_k (Gaussian entries scaled by `_APPEARANCE_WEIGHT`; the amplitude latents
# share one direction, `_EXPRESSIVENESS`) of the standardised appearance ā, made standard
# normal through its distribution F_k over a fixed reference population, ε_k independent
# noise, η the noise left at c = 1 and λ = ``coupled_style``. The style quantity is z_k
# pushed through the inverse of its uncoupled distribution (`_style_from_latents`). With
# λ = 1, z_k is standard normal for every c: every style quantity keeps its distribution at
# every coupling (the categories, the signature's two units and the tic's kind, are the
# largest of one latent per unit or kind: uniform at c = 0, close to it at c > 0) and only
# its dependence on appearance changes. With λ > 1 the appearance-driven part is stronger
# than the idiosyncratic part it replaces: z_k has sd sqrt(1 + ρ²(λ² − 1)), so coupling also
# adds style. At c = 0 the uncoupled draws of `sample_identity` are kept as they are (the set
# is byte-identical to the one generated before the coupling knob).

APPEARANCE = (
    "skin_tone",
    "hair_lightness",
    "hair_redness",
    "bald",
    "short_hair",
    "long_hair",
    "fringe",
    "curly_hair",
    "buzz_cut",
    "no_beard",
    "stubble",
    "full_beard",
    "goatee",
    "moustache",
    "no_glasses",
    "round_glasses",
    "rect_glasses",
    "age",
    "parting",
    "face_width",
    "face_height",
    "jaw",
    "eye_width",
    "eye_height",
    "mouth_width",
    "nose_width",
    "brow_thickness",
)
"""What a face network sees on a neutral frame, as numbers (`appearance`)."""
_APPEARANCE_WEIGHT = np.array([1.0] * 3 + [0.35] * 14 + [0.3, 0.2] + [0.15] * 8)
"""How much each appearance feature (standardised) drives the style: the colours most (what a
face network sees first), hair style, beard and glasses next, age, parting and face geometry
least; few effective dimensions, so that people who look alike move alike."""

_STYLE_SCALARS = (
    "gain",
    "asym",
    "gamma",
    "lead",
    "reach",
    "signature_amp1",
    "signature_amp2",
    "side",
    "blink_period",
    "nod_amp",
    "nod_period",
    "tic_amp",
    "tic_period",
    "tic_side",
)
_N_PROTO = len(EMOTIONS) * len(AUS)
# + one per unit (the signature: the two largest), one per tic kind (the largest), and per
# entry of protos: factor, cross-talk size, cross-talk presence
_N_LATENT = len(_STYLE_SCALARS) + len(AUS) + len(_TICS) + 3 * _N_PROTO
_PROTO = np.array([[_PROTOTYPES[e].get(au, 0.0) for au in AUS] for e in EMOTIONS])
_EXPRESSIVENESS = 0.8  # loading of every amplitude latent on one shared appearance direction
_COUPLING_NOISE = 0.1  # η: sd of the noise left at c = 1, on the latent's standard scale
_COUPLING_SEED = 20250317  # the fixed map (read-outs, reference population); not cfg.seed
_REFERENCE_PEOPLE = 2000


def appearance(ident: Identity) -> np.ndarray:
    """The person's appearance features (named in `APPEARANCE`): skin tone, hair colour and
    style, beard, glasses, age (static wrinkles), hair parting and face geometry."""
    skin = np.asarray(ident.colors["skin"], float)
    hair = np.asarray(ident.colors["hair"], float)
    g = ident.geo
    return np.array(
        [
            skin.mean() / 255,
            hair.mean() / 255,
            (hair[0] - hair[2]) / 255,
            *(np.arange(6) == ident.hair),
            *(np.arange(5) == ident.beard),
            *(np.arange(3) == ident.glasses),
            ident.age,
            ident.part,
            g["w"],
            g["h"],
            g["jaw"],
            g["eye_w"],
            g["eye_h"],
            g["mouth_w"],
            g["nose_w"],
            g["brow_t"],
        ],
        dtype=float,
    )


@cache
def _coupling_map() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed map appearance → g(a): (mean, sd, read-outs W (n_latent, n_appearance),
    sorted read-outs of the reference population (n_people, n_latent))."""
    root = np.random.SeedSequence(_COUPLING_SEED)
    people, readout = root.spawn(2)
    ref = np.stack(
        [
            appearance(sample_identity(np.random.default_rng(s), SyntheticConfig()))
            for s in people.spawn(_REFERENCE_PEOPLE)
        ]
    )
    mean, sd = ref.mean(0), ref.std(0) + 1e-9
    rng = np.random.default_rng(readout)
    w = rng.normal(0, 1, (_N_LATENT, len(APPEARANCE))) * _APPEARANCE_WEIGHT
    shared = rng.normal(0, 1, len(APPEARANCE)) * _APPEARANCE_WEIGHT
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    loud = _intensity_latents()  # expressiveness: every amplitude follows one direction
    w[loud] = (
        _EXPRESSIVENESS * shared / np.linalg.norm(shared)
        + np.sqrt(1 - _EXPRESSIVENESS**2) * w[loud]
    )
    return mean, sd, w, np.sort(((ref - mean) / sd) @ w.T, axis=0)


def _intensity_latents() -> np.ndarray:
    """Which latents set an amplitude: gain, signature and tic and nod amplitudes, the
    person's weight of each unit of each emotion and its cross-talk size."""
    n = len(_STYLE_SCALARS)
    mask = np.zeros(_N_LATENT, bool)
    mask[
        [
            _STYLE_SCALARS.index(k)
            for k in ("gain", "signature_amp1", "signature_amp2", "tic_amp", "nod_amp")
        ]
    ] = True
    mask[n + len(AUS) + len(_TICS) : n + len(AUS) + len(_TICS) + 2 * _N_PROTO] = True
    return mask


def appearance_latents(a: np.ndarray) -> np.ndarray:
    """g(a): the standard-normal style latents that appearance ``a`` dictates at c = 1."""
    mean, sd, w, ref = _coupling_map()
    r = ((a - mean) / sd) @ w.T
    n, cols = len(ref), np.arange(len(r))
    # the empirical distribution of each read-out, linearly interpolated (one search for all)
    i = np.clip([np.searchsorted(ref[:, k], r[k]) for k in cols], 1, n - 1)
    lo, hi = ref[i - 1, cols], ref[i, cols]
    t = np.clip((r - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return ndtri((i - 0.5 + t) / n)


def _style_from_latents(z: np.ndarray, cfg: SyntheticConfig) -> dict:
    """Style fields of `Identity` from standard-normal latents, each pushed through the inverse
    of the distribution `sample_identity` draws it from (same marginals)."""
    n = len(_STYLE_SCALARS)
    zs = dict(zip(_STYLE_SCALARS, z[:n], strict=True))
    p = {k: float(ndtr(v)) for k, v in zs.items()}  # uniform on (0, 1)
    units, tics = z[n : n + len(AUS)], z[n + len(AUS) : n + len(AUS) + len(_TICS)]
    s, v = cfg.style, cfg.variability
    signature = np.zeros(len(AUS))
    signature[np.argsort(-units)[:2]] = (
        0.225 + 0.225 * np.array([p["signature_amp1"], p["signature_amp2"]])
    ) * s
    factor, size, presence = z[n + len(AUS) + len(_TICS) :].reshape(3, len(EMOTIONS), len(AUS))
    protos = _PROTO * np.exp(v * factor) + np.abs(0.18 * v * size) * (ndtr(presence) < 0.3)
    return dict(
        gain=float(np.exp(0.125 * s * zs["gain"])),
        asym=float(np.clip(0.125 * s * zs["asym"], -0.6, 0.6)),
        gamma=float(np.exp(0.225 * s * zs["gamma"])),
        lead=0.175 * s * p["lead"],
        reach=1 - 0.2 * s * p["reach"],
        signature=signature,
        side=int(p["side"] >= 0.5),
        blink_period=15 + 65 * p["blink_period"],
        nod_amp=(0.000125 + 0.000375 * p["nod_amp"]) * s,
        nod_period=10 + 20 * p["nod_period"],
        tic=_TICS[int(np.argmax(tics))],
        tic_amp=(0.125 + 0.125 * p["tic_amp"]) * s,
        tic_period=6 + 8 * p["tic_period"],
        tic_side=int(p["tic_side"] >= 0.5),
        protos=protos,
    )


def coupled_style(ident: Identity, cfg: SyntheticConfig, rng: np.random.Generator) -> Identity:
    """``ident`` with its style re-drawn at coupling ``cfg.coupling`` from its appearance and
    independent noise from ``rng`` (the appearance is kept)."""
    rho = cfg.coupling * np.sqrt(1 - _COUPLING_NOISE**2)
    z = cfg.coupled_style * rho * appearance_latents(appearance(ident)) + np.sqrt(
        1 - rho**2
    ) * rng.standard_normal(_N_LATENT)
    return replace(ident, **_style_from_latents(z, cfg))


def style_params(ident: Identity) -> dict[str, np.ndarray]:
    """Every style quantity of a person as a vector (categories one-hot): what
    `benchmarks/coupling.py` predicts from z_I."""
    one = {
        k: np.atleast_1d(float(getattr(ident, k)))
        for k in (
            "gain",
            "asym",
            "gamma",
            "lead",
            "reach",
            "side",
            "blink_period",
            "nod_amp",
            "nod_period",
            "tic_amp",
            "tic_period",
            "tic_side",
        )
    }
    return {
        **one,
        "signature": ident.signature,
        "tic": (np.array(_TICS) == ident.tic).astype(float),
        "protos": ident.protos.ravel(),
    }


@dataclass
class Frame:
    """Everything that varies from frame to frame."""

    aus: np.ndarray  # (2, n_aus): image-left and image-right half of the face
    blink: float = 0.0  # 0 open, 1 closed
    gaze: tuple[float, float] = (0.0, 0.0)
    pose: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 1.0, 0.0)  # tx ty rot s yaw
    light: tuple[float, float, float] = (1.0, 0.0, 0.0)  # gain, x gradient, y gradient


# ----------------------------------------------------------------------------- drawing


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + rx * np.cos(t), cy + ry * np.sin(t)])


def _mix(c1: tuple[int, int, int], c2: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return _rgb(np.asarray(c1, float) + t * (np.asarray(c2, float) - np.asarray(c1, float)))


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return _rgb(np.asarray(c, float) * f)


class _Pen:
    """Draws shapes given in face coordinates (face centre at 0, half-width ~1, y down)."""

    SS = 4  # supersampling factor (antialiasing)

    def __init__(self, size: int, bg: np.ndarray, pose: tuple[float, ...]) -> None:
        self.n = size * self.SS
        self.img = Image.fromarray(bg)
        self.draw = ImageDraw.Draw(self.img, "RGBA")
        tx, ty, rot, scale, yaw = pose
        self.unit = 0.27 * self.n * scale
        c, s = np.cos(rot), np.sin(rot)
        self.m = self.unit * np.array([[c, -s], [s, c]])
        self.t = np.array([(0.5 + tx) * self.n, (0.47 + ty) * self.n])
        self.yaw = yaw

    def xy(self, p: np.ndarray, depth: float = 0.2) -> np.ndarray:
        p = np.asarray(p, float).reshape(-1, 2)
        q = np.column_stack([p[:, 0] * (1 - 0.15 * abs(self.yaw)) + self.yaw * depth, p[:, 1]])
        return q @ self.m.T + self.t

    def poly(self, p: np.ndarray, fill: tuple[int, ...], depth: float = 0.2) -> None:
        self.draw.polygon(self.xy(p, depth).ravel().tolist(), fill=fill)

    def line(self, p: np.ndarray, fill: tuple[int, ...], width: float, depth: float = 0.2) -> None:
        width_px = max(1, round(width * self.unit))
        self.draw.line(self.xy(p, depth).ravel().tolist(), fill=fill, width=width_px, joint="curve")

    def eye(self, sclera: np.ndarray, inner: list[tuple[np.ndarray, tuple[int, ...]]]) -> None:
        """Sclera polygon with iris/pupil shapes clipped to it."""
        q = self.xy(sclera)
        x0, y0 = np.floor(q.min(0)).astype(int) - 1
        x1, y1 = np.ceil(q.max(0)).astype(int) + 1
        if y1 - y0 < 3:
            return
        crop = self.img.crop((x0, y0, x1, y1))
        d = ImageDraw.Draw(crop, "RGBA")
        off = np.array([x0, y0])
        outline = (q - off).ravel().tolist()
        d.polygon(outline, fill=(245, 243, 238))
        for shape, color in inner:
            d.polygon((self.xy(shape) - off).ravel().tolist(), fill=color)
        mask = Image.new("L", crop.size, 0)
        ImageDraw.Draw(mask).polygon(outline, fill=255)
        self.img.paste(crop, (x0, y0), mask)


def _dark(d: float, base: tuple[int, int, int] = (60, 30, 20)) -> tuple[int, int, int, int]:
    return (*base, int(np.clip(d, 0, 1) * 150))


def _background(ident: Identity, n: int) -> np.ndarray:
    top = np.asarray(ident.colors["bg_top"], float)
    bottom = np.asarray(ident.colors["bg_bottom"], float)
    ramp = np.linspace(0, 1, n)[:, None, None]
    return np.broadcast_to(top + ramp * (bottom - top), (n, n, 3)).round().astype(np.uint8)


def _jaw_drop(am: np.ndarray) -> float:
    """How far the jaw drops (AU26 jaw drop, AU25 lips part), in face units."""
    return 0.16 * am[_A["26"]] + 0.03 * am[_A["25"]]


def _draw_back(pen: _Pen, ident: Identity) -> None:
    """Hair behind the head (long, curly), clothes, neck and ears."""
    g, col = ident.geo, ident.colors
    w, h = g["w"], g["h"]
    skin, hair = col["skin"], col["hair"]
    if ident.hair == 2:
        top = _ellipse(0, -0.1, w * 1.18, h * 1.12, 40)
        top = top[top[:, 1] < -0.1]
        pen.poly(
            np.vstack([[[w * 1.2, 1.55]], top[::-1] if top[0, 0] < 0 else top, [[-w * 1.2, 1.55]]]),
            hair,
            0,
        )
    elif ident.hair == 4:
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        r = 1 + 0.04 * np.sin(11 * t)
        pen.poly(
            np.column_stack([w * 1.32 * r * np.cos(t), -0.3 + h * 1.0 * r * np.sin(t)]), hair, 0
        )
    pen.poly(
        np.array(
            [
                [-2.2, 2.6],
                [-1.6, 1.75],
                [-0.55, 1.45],
                [0, 1.7],
                [0.55, 1.45],
                [1.6, 1.75],
                [2.2, 2.6],
                [2.2, 3.0],
                [-2.2, 3.0],
            ]
        ),
        col["shirt"],
        0,
    )
    pen.poly(
        np.array(
            [
                [-0.42 * w, 0.4 * h],
                [0.42 * w, 0.4 * h],
                [0.46 * w, 1.62],
                [0, 1.72],
                [-0.46 * w, 1.62],
            ]
        ),
        _shade(skin, 0.86),
        0,
    )
    for sg in (-1, 1):
        pen.poly(
            _ellipse(sg * w * 0.96, g["eye_y"] + 0.1, 0.11, 0.21, 20), _shade(skin, 0.93), -0.15
        )


def _draw_face(pen: _Pen, ident: Identity, a: np.ndarray) -> np.ndarray:
    """Face outline (the jaw follows AU25/26), highlight, moles, freckles, forehead wrinkles
    (AU1/AU2, age), raised cheeks (AU6) and crow's feet; returns the outline polygon."""
    g = ident.geo
    am = a.mean(0)
    jaw = _jaw_drop(am)
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    lower = np.clip(np.sin(t), 0, None)
    face = np.column_stack(
        [g["w"] * np.cos(t) * (1 - g["jaw"] * lower**2), g["h"] * np.sin(t) + 0.8 * jaw * lower**2]
    )
    pen.poly(face, ident.colors["skin"], 0)
    pen.poly(face * [0.8, 0.82] + [0, -0.08], (255, 255, 255, 14), 0.1)
    pen.poly(face * [0.55, 0.6] + [0, -0.12], (255, 255, 255, 12), 0.15)
    for x, y, r in ident.moles:
        pen.poly(_ellipse(x, y, r, r, 10), (70, 40, 30, 200))
    for x, y in ident.freckles:
        pen.poly(_ellipse(x, y, 0.012, 0.012, 8), (140, 80, 50, 70))
    by = g["eye_y"] - g["brow_gap"]
    d = 0.15 * ident.age + 0.6 * (am[_A["1"]] + am[_A["2"]]) / 2
    if d > 0.05:
        for k in range(3):
            y = by - 0.16 - 0.08 * k
            pen.line(np.array([[-0.35, y + 0.02], [0, y], [0.35, y + 0.02]]), _dark(d), 0.012)
    for s, sg in ((0, -1), (1, 1)):
        a6 = a[s, _A["6"]]
        cx = sg * (g["eye_x"] + 0.02)
        pen.poly(
            _ellipse(cx, g["eye_y"] + 0.24 - 0.06 * a6, 0.15, 0.085, 20),
            (255, 150, 140, int(25 + 35 * min(a6, 1))),
        )
        d = 0.7 * a6 + 0.2 * ident.age
        if d > 0.1:
            ox = sg * (g["eye_x"] + g["eye_w"] + 0.03)
            for dy in (-0.03, 0.02):
                pen.line(
                    np.array([[ox, g["eye_y"] + dy / 2], [ox + sg * 0.06, g["eye_y"] + dy]]),
                    _dark(d),
                    0.01,
                )
    return face


def _draw_beard(pen: _Pen, ident: Identity, a: np.ndarray, face: np.ndarray) -> None:
    """Stubble, full beard or goatee (under the mouth and nose; the moustache is drawn with
    the mouth)."""
    g, hair = ident.geo, ident.colors["hair"]
    if ident.beard in (1, 2):
        side = face[(face[:, 1] > g["nose_y"] - 0.05)]
        side = side[np.argsort(np.arctan2(side[:, 1], side[:, 0]))]
        top = np.array(
            [[-0.32, g["mouth_y"] - 0.15], [0, g["nose_y"] + 0.08], [0.32, g["mouth_y"] - 0.15]]
        )
        color = (*hair, 90) if ident.beard == 1 else hair
        pen.poly(np.vstack([side, top]), color, 0.05)
    elif ident.beard == 3:  # goatee
        jaw = _jaw_drop(a.mean(0))
        k = g["mouth_w"] * 0.65
        chin = face[(np.abs(face[:, 0]) < k) & (face[:, 1] > 0)]
        chin = chin[np.argsort(-chin[:, 0])]
        top = np.array(
            [
                [-0.7 * k, g["mouth_y"] + 0.04 + jaw],
                [0, g["mouth_y"] + 0.07 + jaw],
                [0.7 * k, g["mouth_y"] + 0.04 + jaw],
            ]
        )
        pen.poly(np.vstack([chin, top]), hair, 0.05)


_U = np.linspace(-1, 1, 15)  # parameter along the eyes and the mouth, corner to corner


def _draw_eyes(pen: _Pen, ident: Identity, fr: Frame, a: np.ndarray) -> None:
    """Lids (AU5 widen, AU6/AU7 narrow, AU4), blink, iris and pupil at the gaze, crease."""
    g, u = ident.geo, _U
    for s, sg in ((0, -1), (1, 1)):
        au = a[s]
        cx, cy = sg * g["eye_x"], g["eye_y"]
        ew, eh = g["eye_w"], g["eye_h"]
        o_up = max(
            0.0,
            1 + 0.55 * au[_A["5"]] - 0.35 * au[_A["7"]] - 0.15 * au[_A["6"]] - 0.12 * au[_A["4"]],
        )
        o_lo = max(0.0, 1 - 0.5 * au[_A["6"]] - 0.35 * au[_A["7"]] + 0.15 * au[_A["5"]])
        base = cy - g["tilt"] * u
        lower = base + 0.7 * eh * o_lo * (1 - u**2) ** 0.9
        upper = base - eh * o_up * (1 - u**2) ** 0.7 * (1 + 0.12 * u)
        upper = upper + fr.blink * (lower - upper)
        x = cx + sg * ew * u
        sclera = np.vstack([np.column_stack([x, upper]), np.column_stack([x, lower])[::-1]])
        ix = cx + (fr.gaze[0] + ident.gaze[0]) * ew * 0.35
        iy = cy + (fr.gaze[1] + ident.gaze[1]) * eh * 0.4 - 0.01
        r = g["iris"]
        pen.eye(
            sclera,
            [
                (_ellipse(ix, iy, r, r, 20), ident.colors["iris"]),
                (_ellipse(ix, iy, 0.42 * r, 0.42 * r, 12), (15, 10, 10)),
                (
                    _ellipse(ix + 0.3 * r, iy - 0.35 * r, 0.18 * r, 0.18 * r, 8),
                    (255, 255, 255, 200),
                ),
            ],
        )
        pen.line(np.column_stack([x, upper]), (35, 25, 25, 230), 0.018)
        pen.line(np.column_stack([x, lower]), _dark(0.35), 0.008)
        crease = upper - 0.035 - 0.02 * o_up
        pen.line(np.column_stack([x[2:-2], crease[2:-2]]), _dark(0.3), 0.01)


def _draw_nose(pen: _Pen, ident: Identity, a: np.ndarray) -> tuple[float, float]:
    """Bridge shade, wings, tip, nostrils, wrinkles (AU9 nose wrinkle, AU10 upper lip raise);
    returns the tip height and the nose width (the nasolabial folds start there)."""
    g, skin = ident.geo, ident.colors["skin"]
    am = a.mean(0)
    a9, a10 = am[_A["9"]], am[_A["10"]]
    tip = g["nose_y"] - 0.035 * a9 - 0.015 * a10
    nw = g["nose_w"] * (1 + 0.25 * a9 + 0.12 * a10)
    pen.line(np.array([[0.05, g["eye_y"] + 0.02], [0.06, tip - 0.1]]), _dark(0.25), 0.02, 0.3)
    for sg in (-1, 1):
        pen.poly(_ellipse(sg * nw * 0.55, tip, 0.05, 0.038, 16), _shade(skin, 0.9), 0.35)
    pen.poly(_ellipse(0, tip - 0.012, nw * 0.42, 0.052, 20), _shade(skin, 1.04), 0.4)
    for sg in (-1, 1):
        pen.poly(_ellipse(sg * nw * 0.3, tip + 0.03, 0.032, 0.014, 12), (50, 25, 20, 220), 0.35)
    if a9 > 0.03:
        for k in range(3):
            y = g["eye_y"] + 0.06 + 0.045 * k
            pen.line(np.array([[-0.07, y + 0.01], [0, y], [0.07, y + 0.01]]), _dark(a9), 0.011, 0.3)
    return tip, nw


def _draw_mouth(pen: _Pen, ident: Identity, a: np.ndarray, tip: float, nw: float) -> None:
    """Lips and corners (AU12/14/15/20/24/17), open mouth and teeth (AU25/26, AU10),
    nasolabial folds, contempt dimple (AU14), moustache, chin crease."""
    g, col, u = ident.geo, ident.colors, _U
    am = a.mean(0)
    jaw = _jaw_drop(am)
    a9, a10 = am[_A["9"]], am[_A["10"]]
    mw = g["mouth_w"] * (1 - 0.12 * am[_A["24"]] - 0.2 * am[_A["26"]])
    cxs, cys = [], []
    for s, sg in ((0, -1), (1, 1)):
        au = a[s]
        cxs.append(sg * (mw + 0.06 * au[_A["12"]] + 0.07 * au[_A["20"]] + 0.04 * au[_A["14"]]))
        cys.append(
            g["mouth_y"]
            - 0.09 * au[_A["12"]]
            - 0.03 * au[_A["14"]]
            + 0.08 * au[_A["15"]]
            + 0.015 * au[_A["20"]]
            + 0.35 * jaw
        )
    xs = np.where(u < 0, -u * cxs[0], u * cxs[1])
    corner = np.where(u < 0, cys[0], cys[1])
    my = g["mouth_y"] - 0.025 * am[_A["17"]]
    line0 = my + (corner - my) * np.abs(u) ** 1.6
    bulge = (1 - u**2) ** 0.8
    in_up = line0 - (0.035 * a10 + 0.012 * am[_A["25"]]) * bulge
    in_lo = line0 + jaw * bulge
    thin = max(0.3, 1 - 0.6 * am[_A["24"]])
    tu = g["lip_up"] * thin * (1 - 0.2 * am[_A["12"]])
    tl = g["lip_lo"] * thin * (1 - 0.15 * am[_A["20"]]) * (1 + 0.2 * am[_A["17"]])
    bow = 1 - 0.3 * np.exp(-((u / 0.15) ** 2))
    out_up = in_up - tu * (0.2 + 0.8 * (1 - u**2) ** 0.5) * bow
    out_lo = in_lo + tl * (0.2 + 0.8 * (1 - u**2) ** 0.6)
    for s, sg in ((0, -1), (1, 1)):  # nasolabial folds and dimple (contempt)
        au = a[s]
        d = 0.12 * ident.age + 0.7 * au[_A["12"]] + 0.6 * a10 + 0.4 * a9 + 0.3 * au[_A["6"]]
        ctrl = np.array(
            [
                [sg * (nw * 0.6 + 0.04), tip - 0.02],
                [sg * (nw * 0.6 + 0.1 + 0.04 * au[_A["12"]]), (tip + cys[s]) / 2],
                [cxs[s] + sg * 0.06, cys[s] + 0.07],
            ]
        )
        pen.line(ctrl, _dark(d), 0.013)
        if au[_A["14"]] > 0.05:
            pen.line(
                np.array(
                    [[cxs[s] + sg * 0.035, cys[s] - 0.03], [cxs[s] + sg * 0.045, cys[s] + 0.02]]
                ),
                _dark(au[_A["14"]]),
                0.012,
            )
    if ident.beard in (3, 4):  # moustache
        pen.poly(
            np.vstack(
                [
                    np.column_stack([xs * 1.1, out_up - 0.005]),
                    np.column_stack([xs * 0.9, out_up - 0.07])[::-1],
                ]
            ),
            col["hair"],
        )
    pen.poly(
        np.vstack([np.column_stack([xs, out_up]), np.column_stack([xs, out_lo])[::-1]]), col["lips"]
    )
    gap = in_lo - in_up
    if gap.max() > 0.006:
        pen.poly(
            np.vstack([np.column_stack([xs, in_up]), np.column_stack([xs, in_lo])[::-1]]),
            (70, 25, 30),
        )
        k = np.abs(u) <= 0.75
        teeth_lo = np.minimum(in_up + 0.045 * (1 - u**2) ** 0.3, in_lo)
        pen.poly(
            np.vstack(
                [np.column_stack([xs[k], in_up[k]]), np.column_stack([xs[k], teeth_lo[k]])[::-1]]
            ),
            (236, 232, 220),
        )
    pen.line(np.column_stack([xs, in_up]), _shade(col["lips"], 0.55), 0.012)
    d = 0.25 + 0.5 * am[_A["17"]]
    pen.line(
        np.array([[-0.09, out_lo[7] + 0.05], [0, out_lo[7] + 0.04], [0.09, out_lo[7] + 0.05]]),
        _dark(d),
        0.012,
    )


def _draw_brows(pen: _Pen, ident: Identity, a: np.ndarray) -> None:
    """Brows (AU1 inner raise, AU2 outer raise, AU4 lower and knit, AU9 pulls them down),
    frown lines."""
    g = ident.geo
    am = a.mean(0)
    a9 = am[_A["9"]]
    by = g["eye_y"] - g["brow_gap"]
    for s, sg in ((0, -1), (1, 1)):
        au = a[s]
        ex, ew = g["eye_x"], g["eye_w"]
        a1, a2, a4 = au[_A["1"]], au[_A["2"]], au[_A["4"]]
        pts = np.array(
            [
                [sg * (ex - 0.85 * ew - 0.05 * a4), by + 0.09 * a4 + 0.025 * a9 - 0.11 * a1],
                [sg * (ex + 0.1 * ew), by - g["brow_arch"] - 0.05 * a1 - 0.08 * a2 + 0.06 * a4],
                [sg * (ex + 1.25 * ew), by + 0.02 - 0.1 * a2 + 0.03 * a4],
            ]
        )
        lo = pts[[0, 1, 2]]
        thick = g["brow_t"] * np.array([1.1, 1.0, 0.4])
        up = lo - np.column_stack([np.zeros(3), thick])
        mid = np.array([[(lo[0, 0] + lo[1, 0]) / 2, (lo[0, 1] + lo[1, 1]) / 2 - 0.01]])
        pen.poly(np.vstack([lo[:1], mid, lo[1:], up[::-1]]), ident.colors["brow"])
    d = 0.9 * am[_A["4"]] + 0.3 * a9
    if d > 0.05:
        for sg in (-1, 1):
            pen.line(np.array([[sg * 0.05, by - 0.01], [sg * 0.045, by + 0.09]]), _dark(d), 0.012)


def _draw_glasses(pen: _Pen, ident: Identity) -> None:
    """Round (1) or rectangular (2) frames with tinted lenses, temples and bridge."""
    if not ident.glasses:
        return
    g, gc = ident.geo, ident.colors["glasses"]
    n = 4 if ident.glasses == 2 else 2
    tt = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    for sg in (-1, 1):
        rx, ry = g["eye_w"] * 1.45, g["eye_h"] * 2.0 + 0.05
        c, s_ = np.cos(tt), np.sin(tt)
        ring = np.column_stack(
            [
                sg * g["eye_x"] + rx * np.sign(c) * np.abs(c) ** (2 / n),
                g["eye_y"] + 0.01 + ry * np.sign(s_) * np.abs(s_) ** (2 / n),
            ]
        )
        pen.poly(ring, (200, 220, 230, 30))
        pen.line(np.vstack([ring, ring[:1]]), gc, 0.022)
        pen.line(
            np.array(
                [[sg * (g["eye_x"] + rx), g["eye_y"]], [sg * g["w"] * 0.97, g["eye_y"] - 0.02]]
            ),
            gc,
            0.02,
            0.1,
        )
    ix = g["eye_x"] - g["eye_w"] * 1.45
    pen.line(
        np.array([[-ix, g["eye_y"] - 0.01], [0, g["eye_y"] - 0.04], [ix, g["eye_y"] - 0.01]]),
        gc,
        0.02,
        0.3,
    )


def _draw_hair(pen: _Pen, ident: Identity) -> None:
    """Hair on top of the head (none when bald), parted on the side ``ident.part``."""
    if ident.hair not in (1, 2, 3, 4, 5):
        return
    g, hair = ident.geo, ident.colors["hair"]
    w, h = g["w"], g["h"]
    hl = {1: -0.78, 2: -0.72, 3: -0.5, 4: -0.75, 5: -0.82}[ident.hair]
    t = np.linspace(np.pi, 2 * np.pi, 30)
    cap = np.column_stack([w * 1.09 * np.cos(t), h * 1.12 * np.sin(t) - 0.03])
    cap = cap[cap[:, 1] < -0.05]
    xh = np.linspace(w, -w, 17)
    part = 0.3 * w * (1 - 2 * ident.part)
    yh = hl + 0.3 * (np.abs(xh) / w) ** 3 + 0.06 * np.exp(-(((xh - part) / 0.12) ** 2))
    if ident.hair == 3:
        yh = yh + 0.05 * (np.arange(17) % 2)
    edge = np.column_stack([xh, yh])
    color = (*hair, 110) if ident.hair == 5 else hair
    pen.poly(np.vstack([cap, [[w * 1.03, -0.1]], edge, [[-w * 1.03, -0.1]]]), color, 0)
    if ident.hair != 5:  # a few strands
        sheen = (255, 255, 255, 28)
        for x0 in np.linspace(-0.7, 0.7, 6) * w:
            pen.line(
                np.array(
                    [
                        [part + 0.15 * (x0 - part), -h * 1.05],
                        [x0, yh[8] - 0.1],
                        [x0 * 1.15, hl + 0.3 * (abs(x0) / w) ** 3],
                    ]
                ),
                sheen,
                0.012,
                0,
            )


def render(ident: Identity, fr: Frame, size: int, bg: np.ndarray) -> Image.Image:
    """Draw one noise-free frame at ``size``×``size`` (``bg`` from ``_background``), back to
    front: head and clothes, face, beard, eyes, nose, mouth, brows, glasses, hair; then
    downsample the supersampled canvas (the antialiasing). ``_finish`` adds light and noise."""
    a = np.clip(fr.aus, 0, 3)
    pen = _Pen(size, bg, fr.pose)
    _draw_back(pen, ident)
    face = _draw_face(pen, ident, a)
    _draw_beard(pen, ident, a, face)
    _draw_eyes(pen, ident, fr, a)
    tip, nw = _draw_nose(pen, ident, a)
    _draw_mouth(pen, ident, a, tip, nw)
    _draw_brows(pen, ident, a)
    _draw_glasses(pen, ident)
    _draw_hair(pen, ident)
    return pen.img.reduce(_Pen.SS)


def _finish(
    img: Image.Image, light: tuple[float, float, float], noise: float, rng: np.random.Generator
) -> Image.Image:
    """Apply the illumination (gain and gradient) and sensor noise, quantise to uint8."""
    x = np.asarray(img, dtype=np.float32)
    n = x.shape[0]
    ramp = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    gain = light[0] + light[1] * ramp[None, :] + light[2] * ramp[:, None]
    x = x * gain[:, :, None]
    if noise > 0:
        x = x + rng.normal(0, noise, x.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- sequences


def _split(ident: Identity, aus: np.ndarray) -> np.ndarray:
    """Bilateral action units -> (2, n) with the person's left/right asymmetry."""
    return np.stack([aus * (1 - ident.asym), aus * (1 + ident.asym)])


def _pulse(t: float, period: float, width: float) -> float:
    """Periodic Gaussian pulses of height 1 centred on multiples of ``period``."""
    d = (t + period / 2) % period - period / 2
    return float(np.exp(-0.5 * (d / width) ** 2))


def sequence_frames(
    ident: Identity,
    emotion: int,
    n: int,
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    scale: float = 1.0,
) -> list[Frame]:
    """The ``n`` frames of one neutral-to-apex sequence of ``EMOTIONS[emotion]``."""
    t = np.arange(n, dtype=float)
    ramp = np.clip((t / (n - 1) - ident.lead) / max(ident.reach - ident.lead, 0.1), 0, 1)
    prog = ramp**ident.gamma
    prog = prog * prog * (3 - 2 * prog) * 0.5 + prog * 0.5  # ease in/out
    apex = (
        ident.protos[emotion]
        * ident.gain
        * cfg.intensity
        * scale
        * np.exp(rng.normal(0, cfg.intensity_jitter))
    )
    sig = ident.signature * (cfg.intensity * scale)
    bilateral = apex.copy()
    if EMOTIONS[emotion] == "contempt":
        bilateral[[_A["12"], _A["14"]]] = 0
    side_only = apex - bilateral
    # idiosyncratic motion: blinks, tic, nod; and pose, light, gaze drift
    blink_phase = rng.uniform(0, ident.blink_period)
    tic_phase = rng.uniform(0, ident.tic_period)
    nod_phase = rng.uniform(0, 2 * np.pi)
    hm, lt = cfg.head_motion, cfg.lighting
    p0 = rng.normal(0, [0.006, 0.006, 0.015, 0.01, 0.025]) * hm + [0, 0, 0, 1, 0]
    drift = rng.normal(0, [0.001, 0.001, 0.0025, 0.0015, 0.005]) * hm
    l0 = np.array(
        [1 + rng.normal(0, 0.025) * lt, rng.normal(0, 0.04) * lt, rng.normal(0, 0.04) * lt]
    )
    ldrift = rng.normal(0, [0.02, 0.02, 0.02]) * lt
    gaze0 = rng.normal(0, 0.3, 2)
    saccade = rng.integers(1, n) if rng.random() < 0.4 else n
    gaze1 = gaze0 + rng.normal(0, 0.5, 2)
    frames = []
    for i in range(n):
        tau = i / (n - 1)
        aus = _split(ident, bilateral * prog[i] + sig * prog[i])
        if side_only.any():
            aus[ident.side] += side_only * prog[i] * (1 + abs(ident.asym))
        tic = ident.tic_amp * _pulse(i - tic_phase, ident.tic_period, 1.5)
        for name in _TIC_AUS[ident.tic]:
            if ident.tic == "twitch":
                aus[ident.tic_side, _A[name]] += tic
            else:
                aus[:, _A[name]] += tic * 0.6
        blink = _pulse(i - blink_phase, ident.blink_period, 0.6)
        nod = ident.nod_amp * np.sin(2 * np.pi * i / ident.nod_period + nod_phase) * hm
        pose = p0 + drift * tau + rng.normal(0, 0.00005, 5) * hm
        pose[1] += nod
        pose[2] += nod * 0.8
        g = gaze0 if i < saccade else gaze1
        light = l0 + ldrift * tau + rng.normal(0, 0.0005, 3) * lt
        frames.append(
            Frame(
                aus=aus,
                blink=min(blink * (cfg.style > 0), 1.0),
                gaze=(float(g[0]), float(g[1])),
                pose=tuple(pose),
                light=tuple(light),
            )
        )
    return frames


def _seeds(cfg: SyntheticConfig, stream: int, index: int) -> list[np.random.SeedSequence]:
    """Independent seeds for (identity, sequences, coupled style) of one person."""
    return np.random.SeedSequence([cfg.seed, stream, index]).spawn(3)


def make_identity(cfg: SyntheticConfig, stream: int, index: int) -> Identity:
    """Person ``index`` of a stream (0 = expression subjects, 1 = identity set): appearance
    and uncoupled style from `sample_identity`, the style re-drawn by `coupled_style` when
    ``cfg.coupling`` > 0 (same appearance, same sequences, whatever the coupling)."""
    seeds = _seeds(cfg, stream, index)
    ident = sample_identity(np.random.default_rng(seeds[0]), cfg)
    if cfg.coupling > 0:
        ident = coupled_style(ident, cfg, np.random.default_rng(seeds[2]))
    return ident


def _save(img: Image.Image, path: Path) -> int:
    img.save(path, format="PNG", compress_level=1)
    return path.stat().st_size


def _count_pmf(cfg: SyntheticConfig) -> np.ndarray:
    """P(a subject shows k emotions), k = min_expressions..max_expressions: 1 + Poisson(λ)
    truncated to that range, with λ set so that the mean is ``cfg.expressions``."""
    ks = np.arange(cfg.min_expressions, cfg.max_expressions + 1)

    def pmf(lam: float) -> np.ndarray:
        logp = (ks - 1) * np.log(lam) - np.cumsum(np.r_[0, np.log(np.arange(1, 8))])[ks - 1]
        p = np.exp(logp - logp.max())
        return p / p.sum()

    lo, hi = 1e-6, 50.0
    for _ in range(60):  # the truncated mean rises with λ: bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pmf(mid) @ ks < cfg.expressions else (lo, mid)
    return pmf((lo + hi) / 2)


def label_plan(cfg: SyntheticConfig) -> list[list[int]] | None:
    """The emotions (indices into `EMOTIONS`) each expression subject shows, CK+-like: how
    many from `_count_pmf` (mean ``cfg.expressions``; CK+: most subjects show 1-3), which ones
    so that the class totals keep CK+'s proportions (the totals are split by largest
    remainder, subjects showing most emotions pick first, each pick weighted by what is left
    of its class's total). None when ``cfg.expressions`` is 0 (drawn per subject instead)."""
    if not cfg.expressions:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _STREAM_PLAN, 2]))
    ks = np.arange(cfg.min_expressions, cfg.max_expressions + 1)
    counts = rng.choice(ks, cfg.subjects, p=_count_pmf(cfg))
    share = counts.sum() * _EMOTION_WEIGHTS / _EMOTION_WEIGHTS.sum()
    quota = np.floor(share).astype(int)
    quota[np.argsort(quota - share, kind="stable")[: counts.sum() - quota.sum()]] += 1
    plan: list[list[int]] = [[] for _ in counts]
    for i in np.lexsort((rng.permutation(cfg.subjects), -counts)):
        for _ in range(counts[i]):
            free = np.ones(len(EMOTIONS), bool)
            free[plan[i]] = False
            weight = np.maximum(quota, 0) * free
            if not weight.any():  # every class left is one this subject already shows
                weight = _EMOTION_WEIGHTS * free
            e = int(rng.choice(len(EMOTIONS), p=weight / weight.sum()))
            plan[i].append(e)
            quota[e] -= 1
    return plan


LABEL_GROUPS = (("happy", "sadness"), ("anger", "surprise"), ("contempt", "disgust", "fear"))
"""The emotions of each appearance group (`label_group`; a partition of `EMOTIONS`, so a
label also names its group): what a label-coupled subject shows (``label_coupling``)."""
_SKIN_BANDS = (0.47, 0.71)  # terciles of the skin tone over `_coupling_map`'s reference people


def label_group(ident: Identity) -> int:
    """The person's appearance group (index into `LABEL_GROUPS`): light, medium or dark skin
    tone (the largest coloured area of the neutral face), about a third of people each."""
    return int(np.searchsorted(_SKIN_BANDS, appearance(ident)[APPEARANCE.index("skin_tone")]))


def label_coupled(cfg: SyntheticConfig) -> np.ndarray:
    """Which expression subjects show their appearance group's emotions: each with
    probability ``cfg.label_coupling``, from a stream of its own (a rising L keeps the subjects
    a lower L couples and adds others)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _STREAM_PLAN, 3]))
    return rng.random(cfg.subjects) < cfg.label_coupling


def _subject_start(
    cfg: SyntheticConfig, index: int, extra: int, emotions: list[int] | None
) -> tuple[Identity, np.random.Generator, list[int | None], np.ndarray]:
    """Expression subject ``index``: the person, its sequence stream (after the label draws),
    its sequence labels in order (CK+ codes, None for unlabelled) and its background.
    ``emotions`` (`label_plan`'s entry) is replaced by the appearance group's emotions when
    the subject is label-coupled (`label_coupled`)."""
    ident = make_identity(cfg, _STREAM_SUBJECTS, index)
    rng = np.random.default_rng(_seeds(cfg, _STREAM_SUBJECTS, index)[1])
    if cfg.expressions and emotions is None:
        emotions = label_plan(cfg)[index]  # type: ignore[index]
    if not cfg.expressions:
        k = int(rng.integers(cfg.min_expressions, cfg.max_expressions + 1))
        emotions = list(
            rng.choice(7, k, replace=False, p=_EMOTION_WEIGHTS / _EMOTION_WEIGHTS.sum())
        )
    if cfg.label_coupling and label_coupled(cfg)[index]:
        emotions = [EMOTIONS.index(e) for e in LABEL_GROUPS[label_group(ident)]]
    labels: list[int | None] = [int(e) + 1 for e in rng.permutation(emotions)]
    for _ in range(extra):
        labels.insert(int(rng.integers(len(labels) + 1)), None)
    return ident, rng, labels, _background(ident, cfg.size * _Pen.SS)


def _sequence(
    ident: Identity, code: int | None, cfg: SyntheticConfig, rng: np.random.Generator
) -> list[Frame]:
    """The frame parameters of the subject's next sequence (CK+ code or None: unlabelled)."""
    n = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
    emo = int(rng.integers(7)) if code is None else code - 1
    return sequence_frames(ident, emo, n, cfg, rng, 0.4 if code is None else 1.0)


def subject_sequences(
    cfg: SyntheticConfig, index: int, extra: int = 0, emotions: list[int] | None = None
) -> Iterator[tuple[int | None, list[Image.Image]]]:
    """The sequences of expression subject ``index``: (CK+ code or None, frames), in order.

    ``emotions``: the subject's entry of `label_plan` (computed here when not given);
    ``extra`` unlabelled sequences (a random emotion at 40 % intensity) are mixed in.
    """
    ident, rng, labels, bg = _subject_start(cfg, index, extra, emotions)
    for code in labels:
        frames = _sequence(ident, code, cfg, rng)
        yield (
            code,
            [_finish(render(ident, fr, cfg.size, bg), fr.light, cfg.noise, rng) for fr in frames],
        )


def neutral_frame(
    cfg: SyntheticConfig, index: int, extra: int = 0, emotions: list[int] | None = None
) -> tuple[Identity, Image.Image]:
    """Expression subject ``index`` and the first frame of its first sequence (the neutral
    I-frame f_I sees), the same image `generate` writes, rendering only that frame."""
    ident, rng, labels, bg = _subject_start(cfg, index, extra, emotions)
    fr = _sequence(ident, labels[0], cfg, rng)[0]
    return ident, _finish(render(ident, fr, cfg.size, bg), fr.light, cfg.noise, rng)


def _write_subject(
    cfg: SyntheticConfig, root: Path, index: int, sid: int, extra: int, emotions: list[int] | None
) -> list[tuple]:
    """Write all sequences of one expression subject; returns (code|None, frames, bytes)."""
    out = []
    for q, (code, frames) in enumerate(subject_sequences(cfg, index, extra, emotions), start=1):
        img_dir = root / "cohn-kanade-images" / f"S{sid:03d}" / f"{q:03d}"
        img_dir.mkdir(parents=True, exist_ok=True)
        size = sum(
            _save(img, img_dir / f"S{sid:03d}_{q:03d}_{i:08d}.png")
            for i, img in enumerate(frames, start=1)
        )
        if code is not None:
            emo_dir = root / "Emotion" / f"S{sid:03d}" / f"{q:03d}"
            emo_dir.mkdir(parents=True, exist_ok=True)
            (emo_dir / f"S{sid:03d}_{q:03d}_{len(frames):08d}_emotion.txt").write_text(
                f"{float(code):16.7e}\n"
            )
        out.append((code, len(frames), size))
    return out


def _identity_frame(ident: Identity, cfg: SyntheticConfig, rng: np.random.Generator) -> Frame:
    """A random view of a person: pose, expression, blink, gaze and lighting all vary."""
    aus = np.zeros(len(AUS))
    if rng.random() < 0.6:
        aus = ident.protos[rng.integers(7)] * ident.gain * rng.uniform(0.2, 1.0)
    aus = aus + ident.signature * rng.uniform(0, 1)
    pose = (
        rng.normal(0, 0.025),
        rng.normal(0, 0.025),
        rng.normal(0, 0.07),
        1 + rng.normal(0, 0.05),
        rng.normal(0, 0.2),
    )
    light = (1 + rng.normal(0, 0.1), rng.normal(0, 0.15), rng.normal(0, 0.15))
    return Frame(
        aus=_split(ident, aus),
        blink=float(rng.random() < 0.1) * rng.uniform(0.5, 1),
        gaze=tuple(rng.normal(0, 0.4, 2)),
        pose=pose,
        light=light,
    )


def _write_identity(cfg: SyntheticConfig, root: Path, index: int, pid: int) -> list[tuple]:
    """Write the images of one person of the identity (pretraining) set."""
    ident = make_identity(cfg, _STREAM_IDENTITIES, index)
    rng = np.random.default_rng(_seeds(cfg, _STREAM_IDENTITIES, index)[1])
    d = root / "identities" / f"P{pid:03d}"
    d.mkdir(parents=True, exist_ok=True)
    bg = _background(ident, cfg.size * _Pen.SS)
    size = 0
    for i in range(1, cfg.id_images + 1):
        fr = _identity_frame(ident, cfg, rng)
        size += _save(
            _finish(render(ident, fr, cfg.size, bg), fr.light, cfg.noise, rng), d / f"{i:03d}.png"
        )
    return [("id", cfg.id_images, size)]


def _run_job(job: tuple) -> list[tuple]:
    kind, *args = job
    return (_write_subject if kind == "S" else _write_identity)(*args)


def subject_ids(cfg: SyntheticConfig) -> list[int]:
    """CK+-like subject ids: increasing from 5 with gaps (never above 999)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _STREAM_PLAN]))
    gaps = rng.integers(1, 5, cfg.subjects) if cfg.subjects <= 240 else np.ones(cfg.subjects)
    ids = 4 + np.cumsum(gaps).astype(int)
    if ids[-1] > 999:
        raise ValueError("at most 995 subjects")
    return [int(i) for i in ids]


def generate(out: Path, config: SyntheticConfig, jobs: int = 1, force: bool = False) -> dict:
    """Write the dataset under ``out`` and return a summary.

    Refuses to write into an existing non-empty directory unless ``force``; with ``force``
    the generated sub-folders (cohn-kanade-images, Emotion, identities) are deleted first.
    """
    out = Path(out)
    start = time.perf_counter()
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty (use force=True / --force)")
        for name in ("cohn-kanade-images", "Emotion", "identities"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    ids = subject_ids(config)
    draw = np.random.default_rng(np.random.SeedSequence([config.seed, _STREAM_PLAN, 1]))
    extra = np.zeros(config.subjects, dtype=int)
    extra[draw.choice(config.subjects, config.unlabelled, replace=False)] = 1
    plan = label_plan(config) or [None] * config.subjects
    if config.coupling > 0:
        _coupling_map()  # once, before the workers fork
    tasks = [("S", config, out, i, sid, int(extra[i]), plan[i]) for i, sid in enumerate(ids)]
    tasks += [("P", config, out, i, i + 1) for i in range(config.id_subjects)]
    per_person: list[list[tuple]] = []
    bar = tqdm(total=len(tasks), desc="synthetic", unit="person")
    if jobs > 1:
        with get_context("fork").Pool(jobs) as pool:
            for res in pool.imap_unordered(_run_job, tasks):
                per_person.append(res)
                bar.update()
    else:
        for job in tasks:
            per_person.append(_run_job(job))
            bar.update()
    bar.close()
    results = [r for res in per_person for r in res]
    if config.unlabelled:  # CK+ quirks: an empty label folder, a stray Finder file
        first = sorted(i for i, e in zip(ids, extra, strict=True) if e)[0]
        seqs = sorted(p.name for p in (out / "cohn-kanade-images" / f"S{first:03d}").iterdir())
        labelled = {p.name for p in (out / "Emotion" / f"S{first:03d}").glob("*")}
        (out / "Emotion" / f"S{first:03d}" / [s for s in seqs if s not in labelled][0]).mkdir()
    (out / "cohn-kanade-images" / f"S{ids[0]:03d}" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    seqs = [r for r in results if r[0] != "id"]
    per_class = {name: sum(1 for r in seqs if r[0] == k + 1) for k, name in enumerate(EMOTIONS)}
    shown = [sum(r[0] is not None for r in res) for res in per_person if res[0][0] != "id"]
    labels_per_subject = {str(k): shown.count(k) for k in range(min(shown), max(shown) + 1)}
    summary = {
        "root": str(out),
        "subjects": config.subjects,
        "sequences": len(seqs),
        "labelled": sum(per_class.values()),
        "unlabelled": sum(1 for r in seqs if r[0] is None),
        "per_class": per_class,
        "labels_per_subject": labels_per_subject,
        "label_groups": {
            "emotions": [list(g) for g in LABEL_GROUPS],
            "group": {
                f"S{sid:03d}": label_group(make_identity(config, _STREAM_SUBJECTS, i))
                for i, sid in enumerate(ids)
            },
            "coupled": [
                f"S{sid:03d}" for sid, c in zip(ids, label_coupled(config), strict=True) if c
            ],
        },
        "frames": sum(r[1] for r in seqs),
        "id_subjects": config.id_subjects,
        "id_images": sum(r[1] for r in results if r[0] == "id"),
        "size": config.size,
        "bytes": sum(r[2] for r in results),
    }
    (out / "synthetic.json").write_text(
        json.dumps({"config": asdict(config), "summary": summary}, indent=1) + "\n"
    )
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def preview(path: Path, config: SyntheticConfig, rows: int = 5, tile: int = 96) -> None:
    """Save a grid: rows = expression subjects, columns = neutral + the 7 apexes (no noise)."""
    cfg = config
    label_h = 14
    grid = Image.new("RGB", (tile * 8, label_h + tile * rows), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(11)
    for c, name in enumerate(("neutral", *EMOTIONS)):
        draw.text((c * tile + 4, 1), name, fill=(0, 0, 0), font=font)
    for r in range(rows):
        ident = make_identity(cfg, _STREAM_SUBJECTS, r)
        bg = _background(ident, cfg.size * _Pen.SS)
        for c in range(8):
            aus = np.zeros(len(AUS))
            side = np.zeros(len(AUS))
            if c:
                aus = ident.protos[c - 1] * ident.gain * cfg.intensity + ident.signature
                if EMOTIONS[c - 1] == "contempt":
                    side[[_A["12"], _A["14"]]] = aus[[_A["12"], _A["14"]]]
                    aus = aus - side
            a = _split(ident, aus)
            a[ident.side] += side
            img = render(ident, Frame(aus=a), cfg.size, bg).resize((tile, tile), Image.LANCZOS)
            grid.paste(img, (c * tile, label_h + r * tile))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)


_HELP = {
    "subjects": "expression subjects (S%%03d)",
    "id_subjects": "identities of the disjoint identity set (P%%03d), 0 for none",
    "id_images": "images per identity of the identity set",
    "seed": "random seed (same seed, same bytes)",
    "size": "frame width and height in pixels (even)",
    "min_frames": "shortest sequence",
    "max_frames": "longest sequence",
    "min_expressions": "fewest expressions per subject",
    "max_expressions": "most expressions per subject",
    "expressions": "mean labelled sequences per subject, CK+-like skew and class totals "
    "(CK+: 327/118); 0: min..max per subject, uniformly many",
    "coupling": "how much style and each person's version of an emotion follow from the "
    "face's appearance (0: independent, 1: a function of it plus a little noise)",
    "coupled_style": "strength of the appearance-driven style against the idiosyncratic one "
    "(1: the style keeps its distribution at every coupling; > 1: coupling "
    "adds style)",
    "label_coupling": "probability that a subject shows exactly its appearance group's "
    "emotions (skin tone band; synthetic.LABEL_GROUPS) instead of the "
    "--expressions draw (0: that draw, 1: the neutral face predicts the label)",
    "unlabelled": "extra sequences without an emotion file (CK+ quirk)",
    "intensity": "scale of every apex",
    "intensity_jitter": "log-sd of a per-sequence apex factor",
    "variability": "how differently subjects perform one emotion",
    "style": "strength of the identity style and idiosyncratic motion",
    "head_motion": "scale of head pose offset, drift and jitter",
    "lighting": "scale of illumination offset and drift",
    "noise": "sd of the Gaussian pixel noise (grey levels)",
}


def main(argv: list[str] | None = None) -> dict | None:
    """Command line: generate a dataset and/or write a preview picture."""
    d = SyntheticConfig()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, help="dataset root (CK+ layout)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--preview", type=Path, help="also save a grid of apex faces here (PNG)")
    for f in d.__dataclass_fields__.values():
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(d, f.name)),
            default=getattr(d, f.name),
            help=_HELP[f.name],
        )
    args = p.parse_args(argv)
    if args.out is None and args.preview is None:
        p.error("give --out and/or --preview")
    cfg = SyntheticConfig(**{k: getattr(args, k) for k in d.__dataclass_fields__})
    if args.preview is not None:
        preview(args.preview, cfg)
        print(f"preview -> {args.preview}")
    if args.out is None:
        return None
    s = generate(args.out, cfg, args.jobs, args.force)
    print(
        f"{s['subjects']} subjects, {s['sequences']} sequences ({s['labelled']} labelled, "
        f"{s['unlabelled']} unlabelled), {s['frames']} frames of {s['size']}x{s['size']}"
    )
    print("per class: " + ", ".join(f"{k} {v}" for k, v in s["per_class"].items()))
    print(
        "subjects showing k labelled sequences: "
        + ", ".join(f"{k}: {v}" for k, v in s["labels_per_subject"].items())
    )
    print(f"identity set: {s['id_subjects']} identities, {s['id_images']} images")
    print(f"{s['bytes'] / 2**20:.1f} MiB in {s['seconds']} s -> {s['root']}")
    return s


if __name__ == "__main__":
    main()
