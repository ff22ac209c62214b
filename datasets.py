"""Datasets of MIC: index the re-encoded CK+ / MMI / AFEW trees, load clips, crop faces.

Commands (``python datasets.py -h``)::

    python datasets.py --dataset ckplus --root DIR     # = python datasets.py index ...
    python datasets.py crop --in RAW --out CROPPED     # MTCNN face crops (AFEW)

``index`` reads DIR, the output of ``reencode.sh`` over a dataset as distributed (the same tree
with every frame folder and video turned into a raw MPEG-4 Part 2 ``.mp4``, label files copied),
prints a summary with every problem found, and writes ``DIR/index.csv``::

    path,subject,label,label_name,num_frames,fold,dataset,view,crop,apex

``path`` is relative to DIR; ``label`` a 0-based index into ``CLASSES[dataset]``; ``num_frames``
the frames of the clip's first GOP (all of them for ``reencode.sh`` output); ``fold`` 0-9 for
the subject-independent 10-fold protocol of CK+/MMI/synthetic (sorted subject i -> fold i mod 10)
and ``train``/``val`` for AFEW; ``view`` the MMI camera view (0 frontal, 2 dual; 0 elsewhere);
``crop`` ``none``/``left``/``right``, the half of the frame ``ClipDataset`` keeps (MMI dual
view); ``apex`` the apex frame index (last frame for CK+/synthetic, middle for MMI, -1 for AFEW).

Class lists (label = position):

* ckplus, synthetic: anger, contempt, disgust, fear, happy, sadness, surprise
  (CK+ emotion codes 1..7; code 0, neutral, is an unknown label).
* mmi: anger, disgust, fear, happy, sadness, surprise (MMI Emotion metatag 1..6).
* afew: angry, disgust, fear, happy, neutral, sad, surprise (the class folder names).
  AFEW has no subject ids: a clip's subject is its clip id (the file stem).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

import coviar

CKPLUS_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
CLASSES: dict[str, tuple[str, ...]] = {
    "ckplus": CKPLUS_CLASSES,
    "synthetic": CKPLUS_CLASSES,
    "mmi": ("anger", "disgust", "fear", "happy", "sadness", "surprise"),
    "afew": ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
}
DATASETS = tuple(CLASSES)
COLUMNS = tuple("path subject label label_name num_frames fold dataset view crop apex".split())
NUM_FOLDS = 10
VIDEO_EXTS = frozenset(
    {".avi", ".mp4", ".m4v", ".mkv", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".webm"}
)
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
PICTURE, MV, RESIDUAL = 0, 1, 2  # coviar representations
IFRAME_SIZE = 160  # input side of the identity branch
GREY = 128 / 255  # letterbox padding (as models.letterbox and bubbliiiing/facenet-pytorch)
RESIDUAL_STD = 0.226  # pytorch-coviar: (x / 255 - 0.5) / 0.226 for residuals (and our MVs)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALES = (1.0, 0.875, 0.75, 0.66)  # multi-scale crop (TSN / pytorch-coviar GroupMultiScaleCrop)
REENCODE_HINT = "run `reencode.sh RAW_DIR OUT_DIR` first and index OUT_DIR"


class RawTreeError(RuntimeError):
    """The directory holds the dataset as distributed (frame folders / .avi), not re-encoded."""


class ClipError(RuntimeError):
    """A clip could not be loaded (the message names the file)."""


# ----------------------------------------------------------------------------------------------
# Index
# ----------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One row of index.csv before folds are assigned."""

    path: str
    subject: str
    label: int
    label_name: str
    dataset: str
    num_frames: int = 0
    fold: str = ""
    view: int = 0
    crop: str = "none"
    apex: int = -1


@dataclass
class Index:
    """Result of indexing a tree: the rows and the problems met, ``{kind: [item, ...]}``."""

    dataset: str
    entries: list[Entry] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)

    def problem(self, kind: str, item: str) -> None:
        self.problems.setdefault(kind, []).append(item)


def _is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir())


def _visible(paths: Iterable[Path]) -> list[Path]:
    """Sorted paths without hidden files (.DS_Store, ._*)."""
    return sorted(p for p in paths if not p.name.startswith("."))


def _raw_error(root: Path, example: Path) -> RawTreeError:
    return RawTreeError(
        f"{root} holds the raw dataset (e.g. {example.relative_to(root)}), not re-encoded "
        f".mp4 clips: {REENCODE_HINT}"
    )


def _gop0_frames(path: Path, total: int) -> int:
    """Frames of GOP 0 of a clip with several GOPs (binary search on the frame index)."""
    lo, hi = 1, total  # lo <= frames of GOP 0 <= hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            coviar.load(str(path), 0, mid - 1, PICTURE, False)
            lo = mid
        except IndexError:
            hi = mid - 1
    return lo


def _measure(index: Index, root: Path, entries: list[Entry], apex: str) -> None:
    """Fill num_frames/apex by reading every clip (decoding its GOP 0 once); unreadable or too
    short clips become problems, the others go into ``index.entries``."""
    for e in tqdm(entries, desc=f"reading {index.dataset} clips", unit="clip", leave=False):
        path = root / e.path
        try:
            n = coviar.get_num_frames(str(path))
            if coviar.get_num_gops(str(path)) > 1:
                n = _gop0_frames(path, n)
                index.problem("several GOPs (only GOP 0 used)", f"{e.path} ({n} frames)")
            if n >= 2:
                coviar.load(str(path), 0, n - 1, RESIDUAL, False)
        except (OSError, ValueError, IndexError, RuntimeError) as exc:
            index.problem("unreadable clip", f"{e.path} ({type(exc).__name__}: {exc})")
            continue
        if n < 2:
            index.problem("too short (no P-frame)", f"{e.path} ({n} frame)")
            continue
        e.num_frames = n
        e.apex = {"last": n - 1, "middle": n // 2, "none": -1}[apex]
        index.entries.append(e)


def _assign_folds(entries: list[Entry]) -> None:
    """Subject-independent 10 folds: sorted subject i -> fold i mod 10."""
    fold = {s: i % NUM_FOLDS for i, s in enumerate(sorted({e.subject for e in entries}))}
    for e in entries:
        e.fold = str(fold[e.subject])


def index_ckplus(root: Path, dataset: str = "ckplus") -> Index:
    """Index a re-encoded CK+ tree (``cohn-kanade-images/S005/001.mp4`` + ``Emotion/``)."""
    images, emotion = root / "cohn-kanade-images", root / "Emotion"
    for d in (images, emotion):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found: is {root} a (re-encoded) CK+ tree?")
    index = Index(dataset)
    classes = CLASSES[dataset]
    clips: list[Path] = []
    raw: list[Path] = []
    for subject in _visible(p for p in images.iterdir() if p.is_dir()):
        for p in _visible(subject.iterdir()):
            if p.is_file() and p.suffix.lower() == ".mp4":
                clips.append(p)
            elif _is_frame_folder(p) and not p.with_suffix(".mp4").exists():
                raw.append(p)
    if raw and not clips:
        raise _raw_error(root, raw[0])
    for p in raw:
        index.problem("not re-encoded", str(p.relative_to(root)))
    seen: set[tuple[str, str]] = set()
    candidates: list[Entry] = []
    for clip in clips:
        subject, seq = clip.parent.name, clip.stem
        seen.add((subject, seq))
        rel = str(clip.relative_to(root))
        label_dir = emotion / subject / seq
        files = sorted(label_dir.glob("*_emotion.txt")) if label_dir.is_dir() else []
        if not files:
            index.problem("unlabelled sequence", rel)
            continue
        if len(files) > 1:
            index.problem("several label files (first used)", rel)
        text = files[0].read_text(errors="replace").strip()
        try:
            code = int(float(text))
        except ValueError:
            index.problem("unknown label", f"{rel} ({text!r})")
            continue
        if not 1 <= code <= len(classes):
            index.problem("unknown label", f"{rel} (code {code})")
            continue
        candidates.append(Entry(rel, subject, code - 1, classes[code - 1], dataset))
    for subject in _visible(p for p in emotion.iterdir() if p.is_dir()):
        for seq in _visible(p for p in subject.iterdir() if p.is_dir()):
            if any(seq.glob("*_emotion.txt")) and (subject.name, seq.name) not in seen:
                index.problem("label without clip", str(seq.relative_to(root)))
    _measure(index, root, candidates, "last")
    _assign_folds(index.entries)
    return index


def _xml(path: Path, index: Index) -> ET.Element | None:
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        index.problem("bad xml", f"{path} ({exc})")
        return None


def _session_subject(session: ET.Element) -> str | None:
    """The subject id of an MMI session.xml: a ``<subject id=...>`` element or an attribute
    named like subject (``subject``, ``subjectId``, ``subject_id``) on any element."""
    for el in session.iter():
        tag = el.tag.rsplit("}", 1)[-1].lower()
        if tag == "subject":
            for key, value in el.attrib.items():
                if key.lower() in ("id", "subjectid", "subject_id", "name") and value.strip():
                    return value.strip()
            if el.text and el.text.strip():
                return el.text.strip()
        for key, value in el.attrib.items():
            if key.lower() in ("subject", "subjectid", "subject_id") and value.strip():
                return value.strip()
    return None


def _session_view(session: ET.Element) -> int | None:
    for el in session.iter():
        if el.tag.rsplit("}", 1)[-1].lower() == "track" and "view" in el.attrib:
            try:
                return int(el.attrib["view"])
            except ValueError:
                return None
    return None


def _mmi_emotion(annotation: ET.Element) -> str | None:
    """The Value of ``<Metatag Name="Emotion" Value="k">`` (None if absent)."""
    for el in annotation.iter():
        if el.tag.rsplit("}", 1)[-1].lower() == "metatag":
            attrs = {k.lower(): v for k, v in el.attrib.items()}
            if attrs.get("name", "").lower() == "emotion" and "value" in attrs:
                return attrs["value"].strip()
    return None


def _read_selection(path: Path, classes: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    """MMI selection CSV ``sid,label,subject`` -> {sid: (label, subject or "")}; label is the
    MMI Emotion code 1..6 or a class name."""
    out: dict[str, tuple[int, str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            sid, text = (row.get("sid") or "").strip(), (row.get("label") or "").strip()
            if not sid:
                continue
            label = int(text) - 1 if text.isdigit() else classes.index(text.lower())
            if not 0 <= label < len(classes):
                raise ValueError(f"{path}: label {text!r} of {sid} is not 1..{len(classes)}")
            out[sid] = (label, (row.get("subject") or "").strip())
    return out


def index_mmi(root: Path, dual_view_half: str = "left", selection: Path | None = None) -> Index:
    """Index a re-encoded MMI tree (``Sessions/<n>/<sid>.mp4``, ``session.xml``, ``<sid>.xml``).

    Frontal (view 0) clips are kept; dual-view (view 2) ones too, with ``crop`` set to
    ``dual_view_half`` so that the loader keeps that half of the frame; other views are skipped
    and counted. ``selection`` (CSV ``sid,label,subject``) pins a published selection: only its
    sids are kept, with its labels (and subjects where given)."""
    sessions = root / "Sessions"
    if not sessions.is_dir():
        raise FileNotFoundError(f"{sessions} not found: is {root} a (re-encoded) MMI tree?")
    classes = CLASSES["mmi"]
    pinned = _read_selection(selection, classes) if selection else None
    index = Index("mmi")
    dirs = _visible(p for p in sessions.iterdir() if p.is_dir())
    dirs.sort(key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))
    clips = [p for d in dirs for p in _visible(d.iterdir()) if p.suffix.lower() == ".mp4"]
    raw = [
        p
        for d in dirs
        for p in _visible(d.iterdir())
        if p.suffix.lower() in VIDEO_EXTS - {".mp4"} and not p.with_suffix(".mp4").exists()
    ]
    if raw and not clips:
        raise _raw_error(root, raw[0])
    for p in raw:
        index.problem("not re-encoded", str(p.relative_to(root)))
    found: set[str] = set()
    candidates: list[Entry] = []
    for clip in clips:
        sid, rel = clip.stem, str(clip.relative_to(root))
        found.add(sid)
        if pinned is not None and sid not in pinned:
            index.problem("not in selection", rel)
            continue
        session_xml = clip.parent / "session.xml"
        session = _xml(session_xml, index) if session_xml.exists() else None
        subject = _session_subject(session) if session is not None else None
        view = _session_view(session) if session is not None else None
        if view is None:
            index.problem("no view in session.xml (frontal assumed)", rel)
            view = 0
        if view not in (0, 2):
            index.problem(f"unsupported view {view}", rel)
            continue
        if pinned is not None:
            label, pinned_subject = pinned[sid]
            subject = pinned_subject or subject
        else:
            annotation = clip.with_suffix(".xml")
            root_el = _xml(annotation, index) if annotation.exists() else None
            value = _mmi_emotion(root_el) if root_el is not None else None
            if value is None:
                index.problem("unlabelled sequence", rel)
                continue
            if not value.isdigit() or not 1 <= int(value) <= len(classes):
                index.problem("unknown label", f"{rel} (Emotion {value!r})")
                continue
            label = int(value) - 1
        if subject is None:
            m = re.match(r"S(\d+)", sid, re.IGNORECASE)
            subject = m.group(0).upper() if m else clip.parent.name
            index.problem("no subject in session.xml (taken from the name)", f"{rel} -> {subject}")
        crop = dual_view_half if view == 2 else "none"
        candidates.append(Entry(rel, subject, label, classes[label], "mmi", view=view, crop=crop))
    for sid in sorted(set(pinned or ()) - found):
        index.problem("selection entry not found", sid)
    _measure(index, root, candidates, "middle")
    _assign_folds(index.entries)
    return index


def index_afew(root: Path) -> Index:
    """Index a re-encoded AFEW 7.0 tree (``Train_AFEW/<Emotion>/*.mp4``, ``Val_AFEW/...``)."""
    classes = CLASSES["afew"]
    splits = {"train": root / "Train_AFEW", "val": root / "Val_AFEW"}
    if not any(d.is_dir() for d in splits.values()):
        raise FileNotFoundError(f"neither Train_AFEW nor Val_AFEW in {root}: not an AFEW tree?")
    index = Index("afew")
    candidates: list[Entry] = []
    raw: list[Path] = []
    for split, d in splits.items():
        if not d.is_dir():
            index.problem("missing split folder", d.name)
            continue
        for cls in _visible(p for p in d.iterdir() if p.is_dir()):
            items = _visible(cls.iterdir())
            mp4 = [p for p in items if p.is_file() and p.suffix.lower() == ".mp4"]
            raw += [
                p
                for p in items
                if (p.suffix.lower() in VIDEO_EXTS - {".mp4"} or _is_frame_folder(p))
                and not p.with_suffix(".mp4").exists()
            ]
            name = cls.name.lower()
            if name not in classes:
                for p in mp4:
                    index.problem("unknown label", f"{p.relative_to(root)} (folder {cls.name})")
                continue
            for p in mp4:
                e = Entry(str(p.relative_to(root)), p.stem, classes.index(name), name, "afew")
                e.fold = split
                candidates.append(e)
    if raw and not candidates:
        raise _raw_error(root, raw[0])
    for p in raw:
        index.problem("not re-encoded", str(p.relative_to(root)))
    _measure(index, root, candidates, "none")
    return index


def build_index(
    dataset: str, root: str | Path, dual_view_half: str = "left", selection: str | None = None
) -> Index:
    """Index the re-encoded tree ``root`` of ``dataset`` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    if dataset in ("ckplus", "synthetic"):
        return index_ckplus(root, dataset)
    if dataset == "mmi":
        return index_mmi(root, dual_view_half, Path(selection) if selection else None)
    if dataset == "afew":
        return index_afew(root)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def write_index(index: Index, path: str | Path) -> None:
    """Write the rows of ``index`` to ``path`` (columns ``COLUMNS``)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for e in index.entries:
            w.writerow([getattr(e, c) for c in COLUMNS])


def summary(index: Index) -> str:
    """Human-readable summary: clips per class, subjects, folds, every problem listed."""
    es = index.entries
    classes = CLASSES[index.dataset]
    lines = [
        f"{index.dataset}: {len(es)} clips, {len({e.subject for e in es})} subjects, "
        f"{len(classes)} classes"
    ]
    per_class = Counter(e.label for e in es)
    lines.append("clips per class:")
    lines += [f"  {i} {name:<10} {per_class[i]:5d}" for i, name in enumerate(classes)]
    lines.append("folds (clips / subjects):")
    for fold in sorted({e.fold for e in es}, key=lambda f: (not f.isdigit(), f.zfill(3))):
        sel = [e for e in es if e.fold == fold]
        lines.append(f"  {fold:<5} {len(sel):5d} / {len({e.subject for e in sel})}")
    if index.dataset == "mmi":
        views = Counter(e.view for e in es)
        lines.append(f"views: {views[0]} frontal, {views[2]} dual (cropped half)")
    total = sum(len(v) for v in index.problems.values())
    lines.append(f"problems: {total}")
    for kind, items in sorted(index.problems.items()):
        lines.append(f"  {kind}: {len(items)}")
        lines += [f"    {item}" for item in items]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Torch dataset
# ----------------------------------------------------------------------------------------------


def read_index(path: str | Path) -> list[dict[str, str]]:
    """Rows of an index.csv as dicts (checks the columns)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}; re-run datasets.py")
        return list(reader)


def sample_indices(num_frames: int, num_segments: int, train: bool, first: int = 1) -> list[int]:
    """TSN sampling of ``num_segments`` frame indices in ``[first, num_frames)``: the range is cut
    into equal segments; a random frame of each when training (torch's RNG), the centre one
    otherwise. Segments shorter than a frame repeat frames."""
    n = num_frames - first
    if n < 1:
        raise ValueError(f"no frame to sample in [{first}, {num_frames})")
    out = []
    for s in range(num_segments):
        lo, hi = n * s / num_segments, n * (s + 1) / num_segments
        t = lo + (hi - lo) * (torch.rand(()).item() if train else 0.5)
        out.append(first + min(int(t), n - 1))
    return out


def multiscale_box(
    h: int, w: int, train: bool, scales: Sequence[float] = SCALES
) -> tuple[int, int, int, int]:
    """Crop box (top, left, height, width). Training: TSN multi-scale crop, side lengths from
    ``scales`` × the shorter side (height and width at most one scale step apart) at a random
    offset. Test: the centred square of the shorter side."""
    base = min(h, w)
    if not train:
        return (h - base) // 2, (w - base) // 2, base, base
    sizes = [max(1, int(base * s)) for s in scales]
    pairs = [(a, b) for i, a in enumerate(sizes) for j, b in enumerate(sizes) if abs(i - j) <= 1]
    ch, cw = pairs[int(torch.randint(len(pairs), ()).item())]
    top = int(torch.randint(h - ch + 1, ()).item())
    left = int(torch.randint(w - cw + 1, ()).item())
    return top, left, ch, cw


def _quantise(a: np.ndarray) -> np.ndarray:
    """Residuals / MVs (int32) -> uint8 clip(v + 128, 0, 255), pytorch-coviar's first step;
    pictures (uint8) unchanged."""
    if a.dtype == np.uint8:
        return a
    return np.clip(a + 128, 0, 255).astype(np.uint8)


def crop_frames(a: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
    """(k, H, W, C) array cropped to ``box`` -> uint8 (k, C, h, w) (channels-last in memory);
    int32 arrays (residuals, MVs) are ``_quantise``d."""
    top, left, h, w = box
    a = np.ascontiguousarray(_quantise(a[:, top : top + h, left : left + w]))
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def normalise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Float model input from uint8-valued RGB (or MV) pixels, as pytorch-coviar: residuals and
    motion vectors (already shifted by +128) ``(x / 255 - 0.5) / 0.226``; pictures (``"rgb"``)
    ``(x / 255 - mean) / std`` with ImageNet's mean and std. Channels on dimension -3."""
    x = x.float() / 255
    if kind == "rgb":
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        return (x - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    return (x - 0.5) / RESIDUAL_STD


def resize_frames(t: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (k, C, h, w) -> uint8 (k, C, size, size), bilinear, antialiased (as the uint8
    image transforms of pytorch-coviar, and fast)."""
    if t.shape[-2:] == (size, size):
        return t
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def letterbox(image: torch.Tensor, size: int = IFRAME_SIZE, fill: float = GREY) -> torch.Tensor:
    """(3, H, W) uint8, or float in [0, 1] -> float32 (3, size, size) in [0, 1]: resized keeping
    the aspect ratio (bicubic, antialiased), centred on ``fill`` grey."""
    h, w = image.shape[-2:]
    scale = min(size / w, size / h)
    nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
    x = image[None]
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    top, left = (size - nh) // 2, (size - nw) // 2
    return F.pad(x, (left, size - nw - left, top, size - nh - top), value=fill)[0]


class ClipDataset(Dataset):
    """Clips of an index.csv as MIC inputs.

    ``ClipDataset(root, index_csv=None, folds=None, split=None, train=False, num_segments=8,
    size=112, representation="residual", with_mv=False, accumulate=False, cache=None,
    scales=SCALES)``

    * ``root``: the indexed directory; ``index_csv`` defaults to ``root/index.csv``.
    * ``folds``: keep the rows of these folds (CK+/MMI); ``split``: ``"train"``/``"val"``
      (AFEW); both None: every row.
    * ``train``: random TSN sampling + multi-scale crop (one box per clip) + horizontal flip
      (p = 0.5, mirrors every picture, negates the MV x); otherwise centre sampling and the
      centred square of the shorter side; both resized to ``size`` × ``size``.
    * ``representation``: ``"residual"`` (MIC) or ``"rgb"`` (the RGB baseline: decoded frames
      sampled over all frames 0..n-1).
    * ``cache``: a ``DecodeCache`` or a directory for one (None: decode every time).

    Item (dict): ``input`` float32 (S, 3, size, size) RGB channel order; ``mv`` (with_mv)
    float32 (S, 2, size, size), channels (x, y); ``iframe`` float32 (3, 160, 160) RGB in [0, 1]
    letterboxed on grey; ``apex`` float32 (3, size, size) RGB in [0, 1] (zeros without apex)
    and ``has_apex`` bool; ``label``, ``subject`` int64 tensors; ``index`` int.
    Normalisation (pytorch-coviar): residual and MV ``(clip(v + 128, 0, 255) / 255 - 0.5) /
    0.226``; rgb ``(x / 255 - mean) / std`` with ImageNet mean/std.
    """

    def __init__(
        self,
        root: str | Path,
        index_csv: str | Path | None = None,
        folds: Sequence[int] | None = None,
        split: str | None = None,
        train: bool = False,
        num_segments: int = 8,
        size: int = 112,
        representation: str = "residual",
        with_mv: bool = False,
        accumulate: bool = False,
        cache: DecodeCache | str | Path | None = None,
        scales: Sequence[float] = SCALES,
    ) -> None:
        if representation not in ("residual", "rgb"):
            raise ValueError(f"representation must be 'residual' or 'rgb', not {representation!r}")
        if split not in (None, "train", "val"):
            raise ValueError(f"split must be None, 'train' or 'val', not {split!r}")
        self.root = Path(root)
        index_csv = Path(index_csv) if index_csv else self.root / "index.csv"
        if not index_csv.exists():
            raise FileNotFoundError(
                f"{index_csv} not found: run `python datasets.py --dataset NAME --root {root}`"
            )
        rows = read_index(index_csv)
        names = {r["dataset"] for r in rows}
        if len(names) != 1 or next(iter(names)) not in CLASSES:
            raise ValueError(f"{index_csv}: expected one known dataset, found {sorted(names)}")
        self.dataset = names.pop()
        self.class_names: list[str] = list(CLASSES[self.dataset])
        self.num_classes = len(self.class_names)
        self.subjects: list[str] = sorted({r["subject"] for r in rows})
        self._subject_index = {s: i for i, s in enumerate(self.subjects)}
        if folds is not None:
            keep = {str(int(f)) for f in folds}
            rows = [r for r in rows if r["fold"] in keep]
        if split is not None:
            rows = [r for r in rows if r["fold"] == split]
        if not rows:
            raise ValueError(f"{index_csv}: no clip in folds={folds} split={split}")
        self.rows = rows
        self.train, self.num_segments, self.size = train, num_segments, size
        self.representation, self.with_mv, self.accumulate = representation, with_mv, accumulate
        self.cache = DecodeCache(cache) if isinstance(cache, str | Path) else cache
        self.scales = tuple(scales)

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, path: Path, frames: list[int], rep: int, num_frames: int) -> np.ndarray:
        """The frames' representation ``rep`` (k, H, W, C): coviar's arrays, or their uint8
        ``_quantise``d copies from the cache (``crop_frames`` treats both alike)."""
        if self.cache is not None:
            return self.cache.frames(path, rep, self.accumulate, num_frames)[frames]
        return coviar.load_many(str(path), 0, frames, rep, self.accumulate)

    def _decode(
        self, path: Path, num_frames: int, seg: list[int], pics: list[int]
    ) -> dict[str, np.ndarray]:
        try:
            out = {}
            if self.representation == "rgb":
                both = self._load(path, seg + pics, PICTURE, num_frames)
                out["input"], out["pics"] = both[: len(seg)], both[len(seg) :]
            else:
                out["input"] = self._load(path, seg, RESIDUAL, num_frames)
                out["pics"] = self._load(path, pics, PICTURE, num_frames)
            if self.with_mv:
                out["mv"] = self._load(path, seg, MV, num_frames)
        except (OSError, ValueError, IndexError, RuntimeError) as exc:
            raise ClipError(f"cannot load clip {path}: {type(exc).__name__}: {exc}") from exc
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        path = self.root / row["path"]
        n, apex = int(row["num_frames"]), int(row["apex"])
        seg = sample_indices(
            n, self.num_segments, self.train, 0 if self.representation == "rgb" else 1
        )
        arrays = self._decode(path, n, seg, [0] + ([apex] if apex >= 0 else []))
        h, w = arrays["pics"].shape[1:3]
        half = {"none": (0, w), "left": (0, w // 2), "right": (w // 2, w - w // 2)}
        left, width = half[row["crop"]]
        top, x0, ch, cw = multiscale_box(h, width, self.train, self.scales)
        box = (top, left + x0, ch, cw)
        flip = self.train and torch.rand(()).item() < 0.5

        def spatial(a: np.ndarray, bgr: bool) -> torch.Tensor:
            """Crop, resize, flip; float32 in [0, 255], RGB if ``bgr``."""
            t = resize_frames(crop_frames(a, box), self.size).float()
            t = t.flip(-1) if flip else t
            return t[:, [2, 1, 0]] if bgr else t

        x = normalise(spatial(arrays["input"], bgr=True), self.representation)
        item: dict[str, Any] = {"input": x.contiguous()}
        if self.with_mv:
            mv = spatial(arrays["mv"], bgr=False)
            if flip:  # mirrored motion: x displacement v - 128 -> 128 - v
                mv[:, 0] = (256 - mv[:, 0]).clamp(0, 255)
            item["mv"] = normalise(mv, "mv").contiguous()
        iframe = letterbox(crop_frames(arrays["pics"][:1], (0, left, h, width))[0])
        item["iframe"] = (iframe.flip(-1) if flip else iframe)[[2, 1, 0]]
        if apex >= 0:
            item["apex"] = (spatial(arrays["pics"][1:2], bgr=True)[0] / 255).contiguous()
        else:
            item["apex"] = torch.zeros(3, self.size, self.size)
        item["has_apex"] = apex >= 0
        item["label"] = torch.tensor(int(row["label"]), dtype=torch.int64)
        item["subject"] = torch.tensor(self._subject_index[row["subject"]], dtype=torch.int64)
        item["index"] = i
        return item


class DecodeCache:
    """On-disk cache of every frame of a clip's representation, decoded once.

    ``DecodeCache(directory, short_side=None)``: one ``.npy`` uint8 (n, H, W, C) per clip and
    representation (after ``_quantise``, so identical to what ``ClipDataset`` computes
    without a cache), keyed by path, size, mtime, representation and accumulate. With
    ``short_side`` the frames are stored downscaled to that shorter side (bilinear, antialiased;
    choose at least ``size / min(scales)``): a smaller cache and faster loading, at the cost of
    a second resampling. Files are written atomically, so DataLoader workers can share a
    directory; ``np.load(mmap_mode="r")`` reads only the sampled frames."""

    def __init__(self, directory: str | Path, short_side: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.short_side = short_side

    def _file(self, path: Path, rep: int, accumulate: bool) -> Path:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{rep}|{accumulate}|{self.short_side}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.directory / f"{path.stem}-{digest}.npy"

    def frames(self, path: Path, rep: int, accumulate: bool, num_frames: int) -> np.ndarray:
        """All ``num_frames`` frames of GOP 0 of ``path`` as uint8 (n, H, W, C), from the cache
        or decoded (and stored) now."""
        file = self._file(path, rep, accumulate)
        if file.exists():
            return np.load(file, mmap_mode="r")
        a = _quantise(coviar.load_many(str(path), 0, range(num_frames), rep, accumulate))
        h, w = a.shape[1:3]
        if self.short_side is not None and min(h, w) > self.short_side:
            scale = self.short_side / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            t = torch.from_numpy(a).permute(0, 3, 1, 2).float()
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
            a = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.ascontiguousarray(a))
        os.replace(tmp, file)
        return np.load(file, mmap_mode="r")


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of ``ClipDataset`` items into a batch (``DataLoader(collate_fn=collate)``)."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            dtype = torch.bool if isinstance(values[0], bool) else torch.int64
            out[key] = torch.tensor(values, dtype=dtype)
    return out


# ----------------------------------------------------------------------------------------------
# Face crops (video in the wild)
# ----------------------------------------------------------------------------------------------


@dataclass
class CropResult:
    """Outcome of ``crop_tree``: crop boxes (x0, y0, x1, y1) per written clip, clips with no
    face, clips that could not be read (with the reason)."""

    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    """RGB uint8 frames of a video file or a frame folder (name order), and the frame rate."""
    if path.is_dir():
        files = _visible(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        return [np.asarray(Image.open(p).convert("RGB")) for p in files], 25.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return frames, rate


def face_box(
    frames: Sequence[np.ndarray],
    detector: Any,
    margin: float = 0.3,
    detect_frames: int = 16,
    min_prob: float = 0.9,
) -> tuple[int, int, int, int] | None:
    """One square crop box (x0, y0, x1, y1) for a clip, or None if no face is found.

    The largest face is detected (``detector``: facenet-pytorch ``MTCNN``) in up to
    ``detect_frames`` evenly spaced frames; the box is the per-coordinate median of the
    detections kept (probability >= ``min_prob``), made square on its longer side, enlarged by
    ``margin`` (0.3 = 30 %), of even side, shifted inside the frame (shrunk if larger)."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(detect_frames, len(frames))).round())
    boxes, probs = detector.detect(np.stack([frames[int(i)] for i in picks]))
    found = [
        b[0]
        for b, p in zip(boxes, probs, strict=True)
        if b is not None and p[0] is not None and p[0] >= min_prob
    ]
    if not found:
        return None
    x0, y0, x1, y1 = np.median(np.stack(found), axis=0)
    h, w = frames[0].shape[:2]
    side = int(round(max(x1 - x0, y1 - y0) * (1 + margin)))
    side = max(2, min(side + side % 2, h - h % 2, w - w % 2))
    left = int(np.clip(round((x0 + x1 - side) / 2), 0, w - side))
    top = int(np.clip(round((y0 + y1 - side) / 2), 0, h - side))
    return left, top, left + side, top + side


def write_video(path: Path, frames: Sequence[np.ndarray], rate: float, q: int = 2) -> None:
    """Write RGB frames as MPEG-4 Part 2 (fixed quantiser ``q``) with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream: Any = out.add_stream("mpeg4", rate=round(rate) or 25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.options = {"qmin": str(q), "qmax": str(q)}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def crop_tree(
    src: str | Path,
    dst: str | Path,
    margin: float = 0.3,
    size: int | None = None,
    fmt: str = "video",
    detect_frames: int = 16,
    min_prob: float = 0.9,
    device: str = "cpu",
) -> CropResult:
    """Mirror ``src`` into ``dst`` with every clip (video or frame folder) cropped to its face.

    ``fmt`` "video": ``dst/<path minus suffix>.avi`` (MPEG-4 Part 2, q 2); "frames":
    ``dst/<path minus suffix>/000001.png ...``; both are what ``reencode.sh`` takes. ``size``
    resizes the crops to size × size. Other files are copied. ``dst/crops.csv`` lists every clip
    with its box (empty when no face was found). See ``face_box`` for the box."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    clips, others = [], []
    for d, dirs, files in os.walk(src):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        here = Path(d)
        if here != src and _is_frame_folder(here):
            clips.append(here)
            continue
        for name in sorted(files):
            p = here / name
            if name.startswith(".") or p.suffix.lower() in IMAGE_EXTS:
                continue
            (clips if p.suffix.lower() in VIDEO_EXTS else others).append(p)
    if not clips:
        raise FileNotFoundError(f"no video or frame folder under {src}")
    from facenet_pytorch import MTCNN  # here: importing it (torchvision) costs seconds

    detector = MTCNN(select_largest=True, post_process=False, device=device)
    result = CropResult()
    rows = []
    for clip in tqdm(clips, desc="cropping faces", unit="clip"):
        rel = clip.relative_to(src)
        try:
            frames, rate = read_frames(clip)
            if not frames:
                raise ValueError("no frame")
        except (OSError, ValueError, av.error.FFmpegError) as exc:
            result.unreadable.append(f"{rel} ({exc})")
            continue
        box = face_box(frames, detector, margin, detect_frames, min_prob)
        if box is None:
            result.no_face.append(str(rel))
            rows.append([str(rel), "", "", "", "", "", len(frames)])
            continue
        x0, y0, x1, y1 = box
        crops = [f[y0:y1, x0:x1] for f in frames]
        if size is not None:
            crops = [
                np.asarray(Image.fromarray(c).resize((size, size), Image.BICUBIC)) for c in crops
            ]
        out = dst / rel.with_suffix("")
        if fmt == "frames":
            out.mkdir(parents=True, exist_ok=True)
            for i, c in enumerate(crops, 1):
                Image.fromarray(c).save(out / f"{i:06d}.png")
        else:
            out = out.with_name(out.name + ".avi")
            write_video(out, crops, rate)
        result.boxes[str(rel)] = box
        rows.append([str(rel), str(out.relative_to(dst)), *box, len(frames)])
    for p in others:
        target = dst / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    dst.mkdir(parents=True, exist_ok=True)
    with open(dst / "crops.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "path", "x0", "y0", "x1", "y1", "num_frames"])
        w.writerows(rows)
    return result


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Index re-encoded FER datasets (default command) or crop faces.",
        epilog="`python datasets.py --dataset D --root DIR` is `python datasets.py index ...`.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="write ROOT/index.csv and print a summary")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, help="output of reencode.sh over the dataset")
    p.add_argument("--out", help="index file (default ROOT/index.csv)")
    p.add_argument(
        "--dual-view-half",
        choices=("left", "right"),
        default="left",
        help="MMI dual view (view 2): the half of the frame that holds the face "
        "the loader keeps (default left)",
    )
    p.add_argument("--selection", help="MMI: CSV sid,label,subject pinning a selection")
    c = sub.add_parser("crop", help="crop every clip of a tree to its face (MTCNN)")
    c.add_argument("--in", dest="src", required=True, help="raw tree (videos or frame folders)")
    c.add_argument("--out", dest="dst", required=True, help="output tree (for reencode.sh)")
    c.add_argument("--margin", type=float, default=0.3, help="box enlargement (default 0.3)")
    c.add_argument("--size", type=int, help="resize crops to SIZE x SIZE (default: keep)")
    c.add_argument("--format", choices=("video", "frames"), default="video")
    c.add_argument("--detect-frames", type=int, default=16, help="frames searched per clip")
    c.add_argument("--min-prob", type=float, default=0.9, help="MTCNN face probability")
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("index", "crop", "-h", "--help"):
        argv = ["index", *argv]
    args = _parser().parse_args(argv)
    if args.command == "crop":
        try:
            res = crop_tree(
                args.src,
                args.dst,
                args.margin,
                args.size,
                args.format,
                args.detect_frames,
                args.min_prob,
                args.device,
            )
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        total = len(res.boxes) + len(res.no_face) + len(res.unreadable)
        print(
            f"crop: {total} clips, {len(res.boxes)} cropped, {len(res.no_face)} with no face, "
            f"{len(res.unreadable)} unreadable -> {args.dst}"
        )
        for kind, items in (("no face", res.no_face), ("unreadable", res.unreadable)):
            if items:
                print(f"{kind}: {len(items)}")
                print("\n".join(f"  {item}" for item in items))
        return 0 if res.boxes else 1
    try:
        index = build_index(args.dataset, args.root, args.dual_view_half, args.selection)
    except (RawTreeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(index))
    if not index.entries:
        print("error: no clip indexed", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.root) / "index.csv"
    write_index(index, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
