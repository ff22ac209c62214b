"""Datasets of MIC: index the re-encoded CK+ / MMI / AFEW / DFEW / FERV39k / MAFW trees under
their protocols, and read (validating) the index.

Commands (``python datasets.py -h``)::

    python datasets.py --dataset ckplus --root DIR     # = python datasets.py index ...
    python datasets.py --dataset dfew --root DIR [--clips Clip/original]
    python datasets.py --dataset custom --root DIR --annotations DIR/labels.csv [--classes a,b]
    python datasets.py crop --in RAW --out CROPPED     # MTCNN face crops (AFEW; faces.py)

The clips of an index are read by ``reader.ClipDataset``; ``SPECS`` holds one record per dataset
(``DatasetSpec``: classes, apex rule, protocol, clip folders, split reader, training defaults,
how to prepare it).

``index`` reads DIR, the output of ``reencode.sh`` over a dataset as distributed (the same tree
with every frame folder and video turned into a raw MPEG-4 Part 2 ``.mp4``, label and split
files copied), prints a summary with every problem found (at most ``MAX_LISTED`` of a kind; all
of them go to ``DIR/index_problems.txt``), and writes ``DIR/index.csv``::

    path,subject,label,label_name,num_frames,fold,dataset,view,crop,apex

``path`` is relative to DIR; ``label`` a 0-based index into the dataset's classes (``custom``:
those of ``DIR/index_classes.txt``, written beside the index); ``num_frames``
the frames of the clip's first GOP (all of them for ``reencode.sh`` output); ``fold`` 0-9 for
the subject-independent 10-fold protocol of CK+/MMI/synthetic (sorted subject i -> fold i mod 10),
``train``/``val`` for AFEW, the set K (1-5) in which the clip is a test clip for DFEW and MAFW,
``train``/``test`` for FERV39k, 1-5 or the CSV's ``split`` for custom; ``view`` the MMI camera
view (0 frontal, 2 dual; 0 elsewhere);
``crop`` ``none``/``left``/``right``, the half of the frame ``ClipDataset`` keeps (MMI dual
view); ``apex`` the apex frame index (last frame for CK+/synthetic, middle for MMI, -1 for the
clips in the wild: AFEW, DFEW, FERV39k, MAFW). ``read_index`` refuses a hand-edited index.csv
whose rows break any of this (see its docstring).

How labels are read (the class lists are the specs'; label = position): CK+ emotion codes
1..7, written ``   5.0000000e+00`` (a label that is not an integer code 1..7 -- 0 neutral, 3.7,
inf, nan, text -- is an unknown label); MMI's Emotion metatag 1..6; AFEW's class folder names;
DFEW's label codes 1..7; FERV39k's names (Happy ... Fear) in DFEW's order, as MAE-DFER's and
DFER-CLIP's readers use them, so that the two tables line up; MAFW's names in the order of its
paper and of MAE-DFER's reader; custom: the names of the annotation CSV.

AFEW, DFEW, FERV39k and MAFW release no subject ids: a clip's subject is the clip itself.

The released layouts of DFEW, FERV39k and MAFW, as public material shows them (the datasets
themselves are licensed and were not available to us):

* DFEW -- the release's own README (v1.0, 10/17/2020, shipped with the dataset):
  ``Clip/original/XXXXX.mp4`` (16,372 clips),
  ``Clip/clip_224x224/`` and ``Clip/clip_224x224_16f/`` (15,906 face-aligned clips, frame
  ``y`` of clip ``x`` named ``x_y.jpg``), ``EmoLabel_DataSplit/train(single_labeled)`` and
  ``test(single_labeled)`` with ``set_1.csv`` .. ``set_5.csv`` (11,697 single-labelled clips,
  fd1: 9,356 train / 2,341 test ...), labels 1 Happy 2 Sad 3 Neutral 4 Angry 5 Surprise
  6 Disgust 7 Fear. The extracted folders are spelled ``train(single-labeled)`` by
  sunlicai/MAE-DFER ``preprocess/dfew.py`` (``pd.read_csv``; columns ``video_name``,
  ``label``; clip folder ``f"{video_name:05d}"``, label - 1) and by
  zengqunzhao/DFER-CLIP ``annotation/preprocess_annotation.py`` (globs
  ``EmoLabel_DataSplit/**/*.csv``, ``str(video_name).zfill(5)`` under ``Clip/clip_224x224``,
  ``label - 1``); both spellings are read. jiangxingxun/DFEW ``README.md`` shows frames
  ``00001/00001_00001.jpg``.
* FERV39k -- MAE-DFER ``preprocess/ferv39k.py``: ``4_setups/All_scenes/train_All.csv`` and
  ``test_All.csv`` read with ``header=None, delimiter=' '``, column 0 a clip path joined to
  ``2_ClipsforFaceCrop``, column 1 a name of {Happy, Sad, Neutral, Angry, Surprise, Disgust,
  Fear}; DFER-CLIP ``annotation/FERV39K_test.txt`` lists the clips as frame folders
  ``2_ClipsforFaceCrop/<Scene>/<Emotion>/<NNNN>`` (e.g. ``Action/Happy/0015``).
* MAFW -- MAFW-database/MAFW ``README.md``: ``clips/00151.mp4`` ..., single labels such as
  ``03747.mp4  anger``; MAE-DFER ``preprocess/mafw.py``: ``split/single/no_caption/set_K/
  train.txt`` and ``test.txt`` (``header=None, delimiter=' '``: clip file name, label name;
  frame folders ``data/frames/<name without extension>``); other public readers name the
  split folder ``Train & Test Set/single/no_caption`` and the videos ``data/clips``; both
  split folders are read.

Not confirmed: the frame file names inside FERV39k's and MAFW's frame folders (any image names
work: reencode.sh takes the frames in name order), and whether a FERV39k or MAFW split file
starts with a header line (MAE-DFER reads them with ``header=None``, one other public FERV39k
reader skips a first line; a header would be listed here as a bad line or unknown label).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType

import torch
from tqdm import tqdm

import coviar

CKPLUS_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
DFEW_CLASSES = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
MAFW_CLASSES = (
    "anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
    "contempt", "anxiety", "helplessness", "disappointment",
)  # fmt: skip
COLUMNS = tuple("path subject label label_name num_frames fold dataset view crop apex".split())
NUM_FOLDS = 10


@dataclass(frozen=True)
class Split:
    """One train/test split of a dataset's protocol: ``name`` (the run's fold folder), the
    ``fold`` values (index.csv column) trained on and tested on."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


def _kfold(k: int, first: int = 0) -> tuple[Split, ...]:
    """k-fold cross-validation over folds ``first .. first+k-1``: each fold is a test fold once."""
    folds = [str(i) for i in range(first, first + k)]
    return tuple(Split(f"fold{f}", tuple(g for g in folds if g != f), (f,)) for f in folds)


VIDEO_EXTS = frozenset(
    {".avi", ".mp4", ".m4v", ".mkv", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".webm"}
)
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MAX_LISTED = 30  # problems of a kind the command prints (all go to index_problems.txt)
REENCODE_HINT = "run `reencode.sh RAW_DIR OUT_DIR` first and index OUT_DIR"


class RawTreeError(RuntimeError):
    """The directory holds the dataset as distributed (frame folders / .avi), not re-encoded."""


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
    source: str = ""  # the clip folder read (DFEW, FERV39k, MAFW)
    classes: tuple[str, ...] | None = None  # custom: the classes of the annotations

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes of the index (label = position)."""
        return self.classes or SPECS[self.dataset].classes or ()

    def problem(self, kind: str, item: str) -> None:
        self.problems.setdefault(kind, []).append(item)


def _digits(text: str) -> bool:
    """Whether ``text`` is ASCII digits only ("²".isdigit() is True, yet int("²") fails)."""
    return text.isascii() and text.isdigit()


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir())


def visible_paths(paths: Iterable[Path]) -> list[Path]:
    """Sorted paths without hidden files (.DS_Store, ._*)."""
    return sorted(p for p in paths if not p.name.startswith("."))


def frame_files(folder: Path) -> list[Path]:
    """The image frames of a frame folder in the order reencode.sh encodes them (``sort -V``:
    numbers compared as numbers, so 2.jpg comes before 10.jpg), hidden files left out."""

    def key(p: Path) -> list:
        return [(0, int(t), "") if _digits(t) else (1, 0, t) for t in re.split(r"([0-9]+)", p.name)]

    return sorted(
        (p for p in visible_paths(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS), key=key
    )


def _report_raw(index: Index, root: Path, raw: list[Path], found: list) -> None:
    """Clips still raw (frame folders, other videos): a RawTreeError when nothing else was found
    (the whole tree is raw), else each one listed as a problem."""
    if raw and not found:
        raise RawTreeError(
            f"{root} holds the raw dataset (e.g. {raw[0].relative_to(root)}), not re-encoded "
            f".mp4 clips: {REENCODE_HINT}"
        )
    for p in raw:
        index.problem("not re-encoded", str(p.relative_to(root)))


def _measure(index: Index, root: Path, entries: list[Entry]) -> None:
    """Fill num_frames/apex (``APEX`` rule) by reading every clip (decoding its GOP 0 once);
    unreadable or too short clips become problems, the others go into ``index.entries``."""
    apex = SPECS[index.dataset].apex
    for e in tqdm(entries, desc=f"reading {index.dataset} clips", unit="clip", leave=False):
        path = root / e.path
        try:
            gops = coviar.gop_lengths(path)
            n = gops[0] if gops else 0
            if len(gops) > 1:
                index.problem("several GOPs (only GOP 0 used)", f"{e.path} ({n} frames)")
            if n >= 2:
                coviar.load(str(path), 0, n - 1, coviar.RESIDUAL, False)
        except (OSError, ValueError, IndexError, RuntimeError) as exc:
            index.problem("unreadable clip", f"{e.path} ({type(exc).__name__}: {exc})")
            continue
        if n < 2:
            index.problem("too short (no P-frame)", f"{e.path} ({n} frame)")
            continue
        e.num_frames = n
        e.apex = {"last": n - 1, "middle": n // 2, "none": -1}[apex]
        index.entries.append(e)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def integer_code(text: str) -> int | None:
    """The integer a label is written as (``3``, ``3.0``, ``   3.0000000e+00``), or None for
    anything else: ``3.7``, ``inf``, ``1e400``, ``nan``, text, empty."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    x = float(text)
    return int(x) if math.isfinite(x) and x.is_integer() else None


def _assign_folds(entries: list[Entry], k: int = NUM_FOLDS, first: int = 0) -> None:
    """Subject-independent k folds: sorted subject i -> fold first + i mod k."""
    fold = {s: first + i % k for i, s in enumerate(sorted({e.subject for e in entries}))}
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
    for subject in visible_paths(p for p in images.iterdir() if p.is_dir()):
        for p in visible_paths(subject.iterdir()):
            if p.is_file() and p.suffix.lower() == ".mp4":
                clips.append(p)
            elif is_frame_folder(p) and not p.with_suffix(".mp4").exists():
                raw.append(p)
    _report_raw(index, root, raw, clips)
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
        code = integer_code(text)
        if code is None or not 1 <= code <= len(classes):
            index.problem("unknown label", f"{rel} ({text!r})")
            continue
        candidates.append(Entry(rel, subject, code - 1, classes[code - 1], dataset))
    for subject in visible_paths(p for p in emotion.iterdir() if p.is_dir()):
        for seq in visible_paths(p for p in subject.iterdir() if p.is_dir()):
            if any(seq.glob("*_emotion.txt")) and (subject.name, seq.name) not in seen:
                index.problem("label without clip", str(seq.relative_to(root)))
    _measure(index, root, candidates)
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


def _read_selection(
    path: Path, classes: tuple[str, ...], index: Index
) -> dict[str, tuple[int, str] | None]:
    """MMI selection CSV ``sid,label,subject`` -> {sid: (label, subject or "")}; label is the
    MMI Emotion code 1..6 or a class name. A line with another label is a problem (with its
    file:line) and its sid maps to None."""
    out: dict[str, tuple[int, str] | None] = {}
    named = _named_label(classes)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            sid, text = (row.get("sid") or "").strip(), (row.get("label") or "").strip()
            if not sid:
                continue
            label = int(text) - 1 if _digits(text) else named(text)
            if label is None or not 0 <= label < len(classes):
                index.problem(
                    "bad selection line",
                    f"{path}:{reader.line_num} (label {text!r} of {sid} is not 1..{len(classes)} "
                    f"nor one of {', '.join(classes)})",
                )
                out[sid] = None
                continue
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
    index = Index("mmi")
    pinned = _read_selection(selection, classes, index) if selection else None
    dirs = visible_paths(p for p in sessions.iterdir() if p.is_dir())
    dirs.sort(key=lambda p: (0, int(p.name), "") if _digits(p.name) else (1, 0, p.name))
    clips = [p for d in dirs for p in visible_paths(d.iterdir()) if p.suffix.lower() == ".mp4"]
    raw = [
        p
        for d in dirs
        for p in visible_paths(d.iterdir())
        if p.suffix.lower() in VIDEO_EXTS - {".mp4"} and not p.with_suffix(".mp4").exists()
    ]
    _report_raw(index, root, raw, clips)
    found: set[str] = set()
    candidates: list[Entry] = []
    for clip in clips:
        sid, rel = clip.stem, str(clip.relative_to(root))
        found.add(sid)
        pin = pinned.get(sid) if pinned is not None else None
        if pinned is not None and pin is None:
            if sid not in pinned:  # else its bad selection line is listed
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
        if pin is not None:
            label, pinned_subject = pin
            subject = pinned_subject or subject
        else:
            annotation = clip.with_suffix(".xml")
            root_el = _xml(annotation, index) if annotation.exists() else None
            value = _mmi_emotion(root_el) if root_el is not None else None
            if value is None:
                index.problem("unlabelled sequence", rel)
                continue
            if not _digits(value) or not 1 <= int(value) <= len(classes):
                index.problem("unknown label", f"{rel} (Emotion {value!r} in {annotation.name})")
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
    _measure(index, root, candidates)
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
        for cls in visible_paths(p for p in d.iterdir() if p.is_dir()):
            items = visible_paths(cls.iterdir())
            mp4 = [p for p in items if p.is_file() and p.suffix.lower() == ".mp4"]
            raw += [
                p
                for p in items
                if (p.suffix.lower() in VIDEO_EXTS - {".mp4"} or is_frame_folder(p))
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
    _report_raw(index, root, raw, candidates)
    _measure(index, root, candidates)
    return index


# ----------------------------------------------------------------------------------------------
# Datasets with official split files: DFEW, FERV39k, MAFW
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """One line of a split file: ``clip`` named as a ``role`` ("train"/"test") clip of the split
    ``split`` ("1".."5", or "All" for FERV39k) with the label text ``label``, at ``where``."""

    clip: str
    label: str
    split: str
    role: str
    where: str


def _inside(rel: str) -> bool:
    """Whether the relative path ``rel`` (``/`` or ``\\`` separated) stays inside its root."""
    if not rel or rel.startswith(("/", "\\")) or PureWindowsPath(rel).drive:
        return False
    return ".." not in PurePosixPath(rel.replace("\\", "/")).parts


def _split_lines(path: Path, root: Path, index: Index) -> Iterator[tuple[str, str, str]]:
    """(clip, label, where) of every line ``clip label`` of a space-separated split file; other
    non-blank lines are problems."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            where = f"{path.relative_to(root)}:{n}"
            if len(fields) == 2:
                yield fields[0], fields[1], where
            elif fields:
                index.problem("bad split line", f"{where} ({line.strip()!r})")


def _read_dfew_splits(root: Path, index: Index) -> list[Listed]:
    """``EmoLabel_DataSplit/{train,test}(single-labeled)/set_K.csv``: header ``video_name,label``,
    the clip number and the label code 1..7 (``single_labeled``, the README's spelling, too)."""
    base = root / "EmoLabel_DataSplit"
    if not base.is_dir():
        raise FileNotFoundError(f"{base} not found: is {root} a (re-encoded) DFEW tree?")
    out: list[Listed] = []
    for k in range(1, 6):
        for role in ("train", "test"):
            names = (f"{role}(single-labeled)", f"{role}(single_labeled)")
            found = [f for n in names if (f := base / n / f"set_{k}.csv").exists()]
            if not found:
                index.problem("missing split file", f"{base.name}/{names[0]}/set_{k}.csv")
                continue
            with open(found[0], newline="", encoding="utf-8-sig", errors="replace") as f:
                reader = csv.DictReader(f)
                reader.fieldnames = [c.strip() for c in reader.fieldnames or ()]
                if not {"video_name", "label"} <= set(reader.fieldnames):
                    raise ValueError(
                        f"{found[0]}: expected the header video_name,label, found "
                        f"{','.join(reader.fieldnames)!r}"
                    )
                for row in reader:
                    where = f"{found[0].relative_to(root)}:{reader.line_num}"
                    name = (row["video_name"] or "").strip()
                    if not _digits(name):
                        index.problem("bad clip name", f"{name!r} at {where}")
                        continue
                    out.append(Listed(f"{int(name):05d}", row["label"] or "", str(k), role, where))
    return out


def _read_ferv39k_splits(root: Path, index: Index) -> list[Listed]:
    """``4_setups/All_scenes/{train,test}_All.csv``: lines ``Scene/Emotion/NNNN Emotion``."""
    base = root / "4_setups" / "All_scenes"
    files = {role: base / f"{role}_All.csv" for role in ("train", "test")}
    if not any(p.exists() for p in files.values()):
        raise FileNotFoundError(
            f"neither train_All.csv nor test_All.csv in {base}: is {root} a (re-encoded) "
            "FERV39k tree?"
        )
    out: list[Listed] = []
    for role, path in files.items():
        if not path.exists():
            index.problem("missing split file", str(path.relative_to(root)))
            continue
        for clip, label, where in _split_lines(path, root, index):
            out.append(Listed(clip.rstrip("/"), label, "All", role, where))
    return out


MAFW_SPLIT_DIRS = ("split/single/no_caption", "Train & Test Set/single/no_caption")


def _read_mafw_splits(root: Path, index: Index) -> list[Listed]:
    """``split/single/no_caption/set_K/{train,test}.txt`` (or under ``Train & Test Set/``, the
    release's name): lines ``NNNNN.mp4 label``."""
    bases = [root / d for d in MAFW_SPLIT_DIRS if (root / d).is_dir()]
    if not bases:
        raise FileNotFoundError(
            f"none of {', '.join(MAFW_SPLIT_DIRS)} in {root}: is it a (re-encoded) MAFW tree?"
        )
    out: list[Listed] = []
    for k in range(1, 6):
        for role in ("train", "test"):
            path = bases[0] / f"set_{k}" / f"{role}.txt"
            if not path.exists():
                index.problem("missing split file", str(path.relative_to(root)))
                continue
            for clip, label, where in _split_lines(path, root, index):
                if PurePosixPath(clip).suffix.lower() in VIDEO_EXTS:
                    clip = clip[: -len(PurePosixPath(clip).suffix)]
                out.append(Listed(clip, label, str(k), role, where))
    return out


def _dfew_label(text: str) -> int | None:
    code = integer_code(text)
    return code - 1 if code is not None and 1 <= code <= len(DFEW_CLASSES) else None


def _named_label(classes: tuple[str, ...]) -> Callable[[str], int | None]:
    names = {c: i for i, c in enumerate(classes)}
    return lambda text: names.get(text.strip().lower())


# ----------------------------------------------------------------------------------------------
# One record per dataset
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the tools know about one dataset, in one place (``SPECS[name]``):

    ``classes`` (label = position; None: the index's own, written beside it: ``custom``),
    ``apex`` (the reconstruction target: ``last`` frame, ``middle`` frame or ``none`` known),
    ``protocol`` (its splits; ``protocol()`` keeps those an index has the folds of),
    ``subject_independent`` (no subject in two numbered folds: checked by ``read_index``),
    ``defaults`` (train.py's ``lr``, ``schedule``, ``epochs`` unless given), ``prepare`` (where
    to get it and the commands that prepare it, ``{raw}``/``{root}`` to fill; train.py prints it
    when the data is missing, the README shows it), ``clip_dirs`` (where the clips lie under
    ROOT, first found used) and ``split_reader``/``label_of`` (the official split files and
    their label text -> class index) for the datasets indexed from split files."""

    classes: tuple[str, ...] | None
    apex: str
    protocol: tuple[Split, ...]
    subject_independent: bool
    defaults: Mapping[str, float | int | str]
    prepare: str
    clip_dirs: tuple[str, ...] = ()
    split_reader: Callable[[Path, Index], list[Listed]] | None = None
    label_of: Callable[[str], int | None] | None = None


def _defaults(lr: float, schedule: str, epochs: int) -> Mapping[str, float | int | str]:
    return MappingProxyType({"lr": lr, "schedule": schedule, "epochs": epochs})


# Training defaults: the paper's settings (Liu et al. 2021) where it gives them; its
# CK+/MMI learning rate, 1e-1 with Adam, diverges, so 1e-3 (`--lr 1e-1 --schedule 30:1e-2`
# reproduces it as written); DFEW, FERV39k, MAFW and custom sets: ours (the paper has none).
_LAB = _defaults(1e-3, "30:1e-4", 100)
_WILD = _defaults(1e-4, "20:1e-5", 40)
CUSTOM_SPLITS = ("train", "val", "test")
SPECS: Mapping[str, DatasetSpec] = MappingProxyType({
    "ckplus": DatasetSpec(
        CKPLUS_CLASSES, "last", _kfold(NUM_FOLDS), True, _LAB,
        """CK+ is licensed: request it at https://www.jeffcohn.net/Resources/ and unpack it so that
{raw}/cohn-kanade-images/S005/001/S005_001_00000001.png ... and
{raw}/Emotion/S005/001/S005_001_00000011_emotion.txt exist, then:

    ./reencode.sh {raw} {root}
    python datasets.py --dataset ckplus --root {root}
    python train.py --dataset ckplus --root {root}"""),
    "mmi": DatasetSpec(
        ("anger", "disgust", "fear", "happy", "sadness", "surprise"), "middle",
        _kfold(NUM_FOLDS), True, _LAB,
        """MMI is licensed: request it at https://mmifacedb.eu/ and unpack the sessions so that
{raw}/Sessions/2/session.xml, S001-002.avi and S001-002.xml exist, then:

    ./reencode.sh {raw} {root}
    python datasets.py --dataset mmi --root {root}
    python train.py --dataset mmi --root {root}"""),
    "afew": DatasetSpec(
        ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"), "none",
        (Split("val", ("train",), ("val",)),), False, _defaults(1e-4, "30:8e-6,60:1e-7", 100),
        """AFEW 7.0 comes with the EmotiW challenge (https://sites.google.com/site/emotiwchallenge/).
Put {raw}/Train_AFEW/Happy/000046280.avi ... and {raw}/Val_AFEW/Sad/... in place, then crop
the faces (MTCNN), re-encode, index and train:

    python datasets.py crop --in {raw} --out {raw}-faces
    ./reencode.sh {raw}-faces {root}
    python datasets.py --dataset afew --root {root}
    python train.py --dataset afew --root {root}"""),
    "dfew": DatasetSpec(
        DFEW_CLASSES, "none", _kfold(5, first=1), False, _WILD,
        """DFEW is licensed: request it at https://dfew-dataset.github.io/ and unpack the split
files and the face-aligned frames so that {raw}/EmoLabel_DataSplit/train(single-labeled)/set_1.csv
... and {raw}/Clip/clip_224x224/00001/00001_00001.jpg ... exist, then:

    ./reencode.sh {raw} {root}
    python datasets.py --dataset dfew --root {root}
    python train.py --dataset dfew --root {root}""",
        ("Clip/clip_224x224", "Clip/original", "Clip/clip_224x224_16f"),
        _read_dfew_splits, _dfew_label),
    "ferv39k": DatasetSpec(
        DFEW_CLASSES, "none", (Split("test", ("train",), ("test",)),), False, _WILD,
        """FERV39k is licensed: request it from its authors (Wang et al., CVPR 2022) and unpack it
so that {raw}/4_setups/All_scenes/train_All.csv, test_All.csv and
{raw}/2_ClipsforFaceCrop/Action/Happy/0015/ (frame folders) ... exist, then:

    ./reencode.sh {raw} {root}
    python datasets.py --dataset ferv39k --root {root}
    python train.py --dataset ferv39k --root {root}""",
        ("2_ClipsforFaceCrop",), _read_ferv39k_splits, _named_label(DFEW_CLASSES)),
    "mafw": DatasetSpec(
        MAFW_CLASSES, "none", _kfold(5, first=1), False, _WILD,
        """MAFW is licensed: request it at https://mafw-database.github.io/MAFW/ and unpack it so
that {raw}/Train & Test Set/single/no_caption/set_1/train.txt, test.txt ... and
{raw}/data/clips/00025.mp4 ... exist, then crop the faces, re-encode, index and train:

    python datasets.py crop --in {raw} --out {raw}-faces
    ./reencode.sh {raw}-faces {root}
    python datasets.py --dataset mafw --root {root}
    python train.py --dataset mafw --root {root}""",
        ("data/clips", "data/frames"), _read_mafw_splits, _named_label(MAFW_CLASSES)),
    "synthetic": DatasetSpec(
        CKPLUS_CLASSES, "last", _kfold(NUM_FOLDS), True, _defaults(1e-3, "20:1e-4", 30),
        """The synthetic set is generated by train.py itself (synthetic.py -> {raw}, then
reencode.sh -> {root} and datasets.py)."""),
    "custom": DatasetSpec(
        None, "none",
        _kfold(5, first=1) + tuple(Split(s, ("train",), (s,)) for s in CUSTOM_SPLITS[1:]),
        True, _LAB,
        """Your own clips: videos or frame folders anywhere under {raw}, and a CSV with a header
and the columns path,label (optionally subject and split: train, val, test) whose paths are
relative to {raw}, e.g. {raw}/labels.csv holding "clips/a.avi,happy,P01" lines, then:

    ./reencode.sh {raw} {root}
    python datasets.py --dataset custom --root {root} --annotations {root}/labels.csv
    python train.py --dataset custom --root {root}"""),
})  # fmt: skip
DATASETS = tuple(SPECS)
# The fixed class lists (label = position), by dataset.
CLASSES = MappingProxyType({n: s.classes for n, s in SPECS.items() if s.classes is not None})
PROTOCOLS = MappingProxyType({n: s.protocol for n, s in SPECS.items()})


def prepare_text(dataset: str, raw: str | Path, root: str | Path) -> str:
    """Where to get ``dataset`` and the commands that prepare it (raw tree ``raw``, re-encoded
    tree ``root``)."""
    return SPECS[dataset].prepare.format(raw=raw, root=root)


def protocol(dataset: str, index_csv: str | Path) -> tuple[Split, ...]:
    """The splits of ``dataset`` that its index ``index_csv`` has the folds of: all of them for
    the built-in datasets; for ``custom`` the 5 folds or train -> val / test, as indexed."""
    splits = SPECS[dataset].protocol
    if SPECS[dataset].classes is not None:
        return splits
    folds = {r["fold"] for r in read_index(index_csv)}
    return tuple(s for s in splits if folds >= set(s.train + s.test))


def _clip_dir(dataset: str, root: Path, clips: str | Path | None) -> Path:
    """The folder of clips: ``clips`` (under ``root``) or the first of the spec's ``clip_dirs``
    there."""
    if clips is not None:
        d = root / clips
        if not d.is_dir():
            raise FileNotFoundError(f"clip folder {d} not found")
        if not d.resolve().is_relative_to(root.resolve()):
            raise ValueError(f"clip folder {d} lies outside {root}: clip paths are relative to it")
        return root / d.resolve().relative_to(root.resolve())
    for rel in SPECS[dataset].clip_dirs:
        if (root / rel).is_dir():
            return root / rel
    raise FileNotFoundError(
        f"none of {', '.join(SPECS[dataset].clip_dirs)} in {root}: pass --clips DIR, the folder of "
        "the clips under ROOT"
    )


def _is_raw(path: Path) -> bool:
    """Whether ``path`` (a clip without ``.mp4``) exists as a frame folder or another video."""
    return is_frame_folder(path) or any(
        path.with_name(path.name + ext).exists() for ext in VIDEO_EXTS - {".mp4"}
    )


def index_split_files(dataset: str, root: Path, clips: str | Path | None = None) -> Index:
    """Index a re-encoded DFEW, FERV39k or MAFW tree by its official split files.

    A clip's ``fold`` is the set K in which it is a test clip (DFEW, MAFW) or ``train``/``test``
    (FERV39k); its subject is the clip itself (no subject ids are released). Problems, each
    counted and listed: a bad line or clip name, an unknown label, labels that disagree between
    split files, a clip that is train and test in the same set, a test clip in several sets, a
    train clip in no test set, a clip missing from the train file of a set where it is not a
    test clip (kept: the fold protocol trains on it there), a clip listed twice in a file, a
    listed clip missing on disk or not re-encoded, a clip on disk in no split file, an
    unreadable clip."""
    spec = SPECS[dataset]
    read, label_of, classes = spec.split_reader, spec.label_of, spec.classes
    index = Index(dataset)
    listed = read(root, index)
    clip_dir = _clip_dir(dataset, root, clips)
    index.source = str(clip_dir.relative_to(root))
    kfold = len(spec.protocol) > 1
    train_files = sorted({x.split for x in listed if x.role == "train"})  # sets with train files
    by_clip: dict[str, list[Listed]] = {}
    for x in listed:
        by_clip.setdefault(x.clip, []).append(x)
    candidates: list[Entry] = []
    raw: list[Path] = []
    for clip in sorted(by_clip):
        xs = by_clip[clip]
        if not _inside(clip):
            index.problem("bad clip name", f"{clip!r} at {xs[0].where}")
            continue
        places = Counter((x.split, x.role) for x in xs)
        for (split, role), n in sorted(places.items()):
            if n > 1:
                index.problem("listed twice in a split file", f"{clip} ({role} of set {split})")
        labels = [label_of(x.label) for x in xs]
        if None in labels:
            bad = xs[labels.index(None)]
            index.problem("unknown label", f"{clip} ({bad.label!r} at {bad.where})")
            continue
        if len(set(labels)) > 1:
            index.problem(
                "labels disagree between split files",
                f"{clip}: " + ", ".join(f"{x.label} at {x.where}" for x in xs),
            )
            continue
        tests = sorted({x.split for x in xs if x.role == "test"})
        trains = {x.split for x in xs if x.role == "train"}
        if set(tests) & trains:
            index.problem(
                "train and test clip in the same set",
                f"{clip} (set {', '.join(sorted(set(tests) & trains))})",
            )
            continue
        if kfold:
            if len(tests) > 1:
                index.problem("test clip in several sets", f"{clip} (sets {', '.join(tests)})")
                continue
            if not tests:
                index.problem("train clip in no test set", f"{clip} ({xs[0].where})")
                continue
            absent = [s for s in train_files if s != tests[0] and s not in trains]
            if absent:
                index.problem(
                    "missing from a train set (trained on there)",
                    f"{clip} (test in set {tests[0]}, not in train of set {', '.join(absent)})",
                )
            fold = tests[0]
        else:
            fold = "test" if tests else "train"
        path = clip_dir / f"{clip}.mp4"
        rel = str(path.relative_to(root))
        if not path.is_file():
            if _is_raw(clip_dir / clip):
                raw.append(clip_dir / clip)
            else:
                index.problem("missing clip", f"{rel} ({xs[0].where})")
            continue
        e = Entry(rel, clip, labels[0], classes[labels[0]], dataset)
        e.fold = fold
        candidates.append(e)
    _report_raw(index, root, raw, candidates)
    for p in sorted(clip_dir.rglob("*.mp4")):
        key = p.relative_to(clip_dir).with_suffix("").as_posix()
        if key not in by_clip and not any(part.startswith(".") for part in Path(key).parts):
            index.problem("clip in no split file", str(p.relative_to(root)))
    _measure(index, root, candidates)
    return index


# ----------------------------------------------------------------------------------------------
# Your own data: an annotation CSV over a raw tree, indexed in reencode.sh's output of it
# ----------------------------------------------------------------------------------------------


def reencoded_path(raw: str) -> str:
    """Where reencode.sh writes the raw clip ``raw`` (relative): a video ``a/b.avi`` becomes
    ``a/b.mp4``, a frame folder ``a/b`` (or ``a/b/``) ``a/b.mp4``."""
    path = PurePosixPath(raw.replace("\\", "/").rstrip("/"))
    stem = path.with_suffix("") if path.suffix.lower() in VIDEO_EXTS else path
    return f"{stem}.mp4"


def classes_file(index_csv: str | Path) -> Path:
    """The class list of a ``custom`` index, one name a line, beside it (``index_classes.txt``)."""
    index_csv = Path(index_csv)
    return index_csv.with_name(f"{index_csv.stem}_classes.txt")


def index_classes(dataset: str, index_csv: str | Path) -> tuple[str, ...]:
    """The classes of an index of ``dataset``: the spec's, or for ``custom`` its classes file."""
    fixed = SPECS[dataset].classes
    if fixed is not None:
        return fixed
    path = classes_file(index_csv)
    if not path.is_file():
        raise ValueError(f"{index_csv}: {path.name} not found beside it; re-run datasets.py")
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def index_custom(root: Path, annotations: Path, classes: Sequence[str] | None = None) -> Index:
    """Index the clips an annotation CSV lists (header; columns ``path,label`` and optionally
    ``subject`` and ``split``): each raw ``path`` (relative to the raw tree, which ``root``
    mirrors) is looked for where reencode.sh writes it (``reencoded_path``). Classes: the label
    names of the clips indexed, sorted, unless ``classes`` fixes them and their order. The
    protocol: the ``split`` column (train, val, test) when there is one, else 5
    subject-independent folds by ``subject`` (sorted subject i -> fold 1 + i mod 5; a clip is
    its own subject without the column). Every line that gives no clip is a problem: a bad
    line, an unknown label or split, a clip listed twice, a clip not re-encoded or missing; so
    is a clip on disk in no line."""
    if not annotations.is_file():
        raise FileNotFoundError(f"annotation file {annotations} not found")
    with open(annotations, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip().lower() for c in reader.fieldnames or ()]
        reader.fieldnames = header
        if not {"path", "label"} <= set(header):
            raise ValueError(
                f"{annotations}: the header must name the columns path,label "
                f"(and optionally subject, split), found {','.join(header)!r}"
            )
        lines = [(f"{annotations.name}:{reader.line_num}", row) for row in reader]
    has_split = "split" in header
    index = Index("custom")
    candidates: list[Entry] = []
    raw: list[Path] = []
    listed: dict[str, str] = {}
    for where, row in lines:
        path, label = (row["path"] or "").strip(), (row["label"] or "").strip()
        split = (row.get("split") or "").strip().lower()
        if not path or not label or not _inside(path):
            index.problem("bad annotation line", f"{where} ({path!r}, {label!r})")
            continue
        if classes and label not in classes:
            index.problem("unknown label", f"{where} ({label!r} not in --classes)")
            continue
        if has_split and split not in CUSTOM_SPLITS:
            index.problem("unknown split", f"{where} ({split!r}: train, val or test)")
            continue
        rel = reencoded_path(path)
        if rel in listed:
            index.problem("clip listed twice", f"{where} ({path}, first at {listed[rel]})")
            continue
        listed[rel] = where
        if not (root / rel).is_file():
            if _is_raw(root / rel[: -len(".mp4")]):
                raw.append(root / rel[: -len(".mp4")])
            else:
                index.problem("missing clip", f"{where} ({path}: no {rel})")
            continue
        subject = (row.get("subject") or "").strip() or rel
        e = Entry(rel, subject, -1, label, "custom")
        e.fold = split
        candidates.append(e)
    _report_raw(index, root, raw, candidates)
    for p in sorted(root.rglob("*.mp4")):
        rel = p.relative_to(root).as_posix()
        if rel not in listed and not any(part.startswith(".") for part in Path(rel).parts):
            index.problem("clip in no annotation line", rel)
    _measure(index, root, candidates)
    index.classes = tuple(classes or sorted({e.label_name for e in index.entries}))
    for e in index.entries:
        e.label = index.classes.index(e.label_name)
    if not has_split:
        _assign_folds(index.entries, 5, first=1)
    return index


def build_index(
    dataset: str,
    root: str | Path,
    dual_view_half: str = "left",
    selection: str | None = None,
    clips: str | None = None,
    annotations: str | None = None,
    classes: Sequence[str] | None = None,
) -> Index:
    """Index the re-encoded tree ``root`` of ``dataset`` (see the module docstring); ``clips``:
    the clip folder under ``root`` (DFEW, FERV39k, MAFW; default: the first of the spec's
    ``clip_dirs``); ``annotations`` and ``classes``: ``custom``'s CSV and class order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    if dataset in ("ckplus", "synthetic"):
        return index_ckplus(root, dataset)
    if dataset == "mmi":
        return index_mmi(root, dual_view_half, Path(selection) if selection else None)
    if dataset == "afew":
        return index_afew(root)
    if dataset == "custom":
        if annotations is None:
            raise ValueError("--dataset custom needs --annotations FILE (CSV path,label[,...])")
        return index_custom(root, Path(annotations), classes)
    if dataset in SPECS and SPECS[dataset].split_reader is not None:
        return index_split_files(dataset, root, clips)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def write_index(index: Index, path: str | Path) -> None:
    """Write the rows of ``index`` to ``path`` (columns ``COLUMNS``), and a custom index's
    classes to ``classes_file(path)``."""
    if index.classes is not None:
        classes_file(path).write_text("".join(f"{c}\n" for c in index.classes))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for e in index.entries:
            w.writerow([getattr(e, c) for c in COLUMNS])


def problem_lines(index: Index) -> list[str]:
    """Every problem of ``index``, one ``kind<TAB>item`` line each."""
    return [f"{kind}\t{item}" for kind, items in sorted(index.problems.items()) for item in items]


def _fold_order(fold: str) -> tuple[bool, str]:
    return not fold.isdigit(), fold.zfill(3)


def summary(index: Index, max_items: int | None = None) -> str:
    """Human-readable summary: clips per class, subjects, folds, every problem counted and
    listed (the first ``max_items`` of each kind when given)."""
    es = index.entries
    classes = index.class_names
    lines = [
        f"{index.dataset}: {len(es)} clips, {len({e.subject for e in es})} subjects, "
        f"{len(classes)} classes" + (f" (clips from {index.source})" if index.source else "")
    ]
    per_class = Counter(e.label for e in es)
    lines.append("clips per class:")
    width = max(map(len, classes))
    lines += [f"  {i:2d} {name:<{width}} {per_class[i]:6d}" for i, name in enumerate(classes)]
    lines.append("folds (clips / subjects):")
    for fold in sorted({e.fold for e in es}, key=_fold_order):
        sel = [e for e in es if e.fold == fold]
        lines.append(f"  {fold:<5} {len(sel):6d} / {len({e.subject for e in sel})}")
    if index.dataset == "mmi":
        views = Counter(e.view for e in es)
        lines.append(f"views: {views[0]} frontal, {views[2]} dual (cropped half)")
    total = sum(len(v) for v in index.problems.values())
    lines.append(f"problems: {total}")
    for kind, items in sorted(index.problems.items()):
        lines.append(f"  {kind}: {len(items)}")
        lines += [f"    {item}" for item in items[:max_items]]
        if max_items is not None and len(items) > max_items:
            lines.append(f"    ... and {len(items) - max_items} more")
    return "\n".join(lines)


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


# Every fold of each dataset's protocol, in order.
FOLDS = {
    d: sorted({f for s in splits for f in s.train + s.test}, key=_fold_order)
    for d, splits in PROTOCOLS.items()
}


def _row_problem(row: dict[str, str], classes: tuple[str, ...]) -> str | None:
    """What is wrong with one index.csv row on its own (None: nothing); ``classes``: those of
    the index's dataset."""
    if None in row or any(row[c] is None for c in COLUMNS):
        return "wrong number of fields"
    dataset = row["dataset"]
    if dataset not in SPECS:
        return f"unknown dataset {dataset!r} (one of {', '.join(DATASETS)})"
    label = _int(row["label"])
    if label is None or not 0 <= label < len(classes):
        return f"label {row['label']!r} is not an integer in 0..{len(classes) - 1} ({dataset})"
    if row["label_name"] != classes[label]:
        return f"label_name {row['label_name']!r} is not class {label}, {classes[label]!r}"
    n = _int(row["num_frames"])
    if n is None or n < 2:
        return f"num_frames {row['num_frames']!r} is not an integer >= 2"
    apex = _int(row["apex"])
    if apex is None or not -1 <= apex < n:
        return f"apex {row['apex']!r} is not an integer in -1..{n - 1}"
    if row["crop"] not in ("none", "left", "right"):
        return f"crop {row['crop']!r} is not none, left or right"
    if _int(row["view"]) is None:
        return f"view {row['view']!r} is not an integer"
    if row["fold"] not in FOLDS[dataset]:
        return f"fold {row['fold']!r} is not a fold of {dataset} ({', '.join(FOLDS[dataset])})"
    if not _inside(row["path"]):
        return f"path {row['path']!r} is not a relative path inside the root"
    if not row["subject"].strip():
        return "empty subject"
    return None


def read_index(path: str | Path) -> list[dict[str, str]]:
    """Rows of an index.csv as dicts, validated: one known dataset; every row's label (and
    label_name), num_frames, apex, crop, view and fold valid for it; paths relative and inside
    the root; no clip listed twice; no subject in two folds where the protocol is
    subject-independent. A bad file raises ``ValueError`` naming it and the line of each bad row
    (the clips' existence is checked when they are read)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}; re-run datasets.py")
        rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise ValueError(f"{path}: no clip listed; re-run datasets.py")
    errors: list[str] = []
    first_dataset = rows[0][1]["dataset"]
    classes = index_classes(first_dataset, path) if first_dataset in SPECS else ()
    clip_line: dict[str, int] = {}
    subject_fold: dict[str, tuple[str, int]] = {}
    for line, row in rows:
        problem = _row_problem(
            row, classes if row["dataset"] == first_dataset else CLASSES.get(row["dataset"], ())
        )
        if problem is None and row["dataset"] != first_dataset:
            problem = f"dataset {row['dataset']!r} in an index of {first_dataset!r}"
        if problem is None:
            key = PurePosixPath(row["path"].replace("\\", "/")).as_posix()
            if key in clip_line:
                problem = f"clip {row['path']} listed twice (first at line {clip_line[key]})"
            clip_line.setdefault(key, line)
        if (
            problem is None and SPECS[row["dataset"]].subject_independent and row["fold"].isdigit()
        ):  # custom's train/val/test are the user's choice
            fold, at = subject_fold.setdefault(row["subject"], (row["fold"], line))
            if fold != row["fold"]:
                problem = (
                    f"subject {row['subject']} in fold {row['fold']} and in fold {fold} (line "
                    f"{at}): the {row['dataset']} protocol is subject-independent"
                )
        if problem is not None:
            errors.append(f"line {line}: {problem}")
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ValueError(
            f"{path}: {len(errors)} bad row(s); fix them or re-run datasets.py:\n  {shown}{more}"
        )
    return [row for _, row in rows]


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
    p.add_argument(
        "--clips",
        help="DFEW/FERV39k/MAFW: the clip folder under ROOT (default: the first that exists of "
        + "; ".join(f"{d}: {', '.join(s.clip_dirs)}" for d, s in SPECS.items() if s.clip_dirs)
        + ")",
    )
    p.add_argument(
        "--annotations",
        help="custom: CSV with a header and the columns path,label[,subject][,split] "
        "(paths of the raw tree reencode.sh converted into ROOT)",
    )
    p.add_argument(
        "--classes",
        help="custom: the class names in label order, comma-separated (default: the "
        "labels found, sorted)",
    )
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
        from faces import crop_tree  # here: faces imports MTCNN's dependencies

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
        except (FileNotFoundError, ValueError) as exc:
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
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        index = build_index(
            args.dataset,
            args.root,
            args.dual_view_half,
            args.selection,
            args.clips,
            args.annotations,
            classes,
        )
    except (RawTreeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.root) / "index.csv"
    problems = out.with_name(f"{out.stem}_problems.txt")
    print(summary(index, MAX_LISTED))
    if not index.entries:
        print("error: no clip indexed", file=sys.stderr)
        return 1
    write_index(index, out)
    print(f"wrote {out}")
    if index.problems:
        problems.write_text("\n".join(problem_lines(index)) + "\n")
        print(f"wrote {problems} (every problem, kind<TAB>item)")
    else:
        problems.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
