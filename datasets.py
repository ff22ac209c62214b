"""Datasets of MIC: index the re-encoded CK+ / MMI / AFEW trees under their protocols.

Commands (``python datasets.py -h``)::

    python datasets.py --dataset ckplus --root DIR     # = python datasets.py index ...
    python datasets.py crop --in RAW --out CROPPED     # MTCNN face crops (AFEW; faces.py)

The clips of an index are read by ``reader.ClipDataset``; ``PROTOCOLS`` holds each dataset's
train/test splits.

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
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
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


# The protocols: subject-independent 10 folds (CK+, MMI, synthetic), AFEW Train -> Val.
PROTOCOLS: dict[str, tuple[Split, ...]] = {
    "ckplus": _kfold(NUM_FOLDS),
    "synthetic": _kfold(NUM_FOLDS),
    "mmi": _kfold(NUM_FOLDS),
    "afew": (Split("val", ("train",), ("val",)),),
}
VIDEO_EXTS = frozenset(
    {".avi", ".mp4", ".m4v", ".mkv", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".webm"}
)
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
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

    def problem(self, kind: str, item: str) -> None:
        self.problems.setdefault(kind, []).append(item)


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir())


def visible_paths(paths: Iterable[Path]) -> list[Path]:
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
            coviar.load(str(path), 0, mid - 1, coviar.PICTURE, False)
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
    for subject in visible_paths(p for p in images.iterdir() if p.is_dir()):
        for p in visible_paths(subject.iterdir()):
            if p.is_file() and p.suffix.lower() == ".mp4":
                clips.append(p)
            elif is_frame_folder(p) and not p.with_suffix(".mp4").exists():
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
    for subject in visible_paths(p for p in emotion.iterdir() if p.is_dir()):
        for seq in visible_paths(p for p in subject.iterdir() if p.is_dir()):
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
    dirs = visible_paths(p for p in sessions.iterdir() if p.is_dir())
    dirs.sort(key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))
    clips = [p for d in dirs for p in visible_paths(d.iterdir()) if p.suffix.lower() == ".mp4"]
    raw = [
        p
        for d in dirs
        for p in visible_paths(d.iterdir())
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



def read_index(path: str | Path) -> list[dict[str, str]]:
    """Rows of an index.csv as dicts (checks the columns)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}; re-run datasets.py")
        return list(reader)


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
