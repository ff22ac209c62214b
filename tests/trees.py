"""Tiny re-encoded trees in the real layouts of CK+, MMI and AFEW, with their quirks (shared by
the tests of datasets.py, reader.py and faces.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from tests.clips import make_clip, make_frames

CK_SUBJECTS = [f"S{n:03d}" for n in (5, 10, 11, 14, 22, 26, 32, 34, 35, 37, 42)]


def clip(
    path: Path, width: int = 64, height: int = 48, frames: int = 8, seed: int = 0, gop: int = 300
) -> Path:
    """A tiny raw MPEG-4 Part 2 stream named like reencode.sh's output."""
    return make_clip(path, width, height, frames, gop, container="m4v", seed=seed)


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).bytes(2048))
    return path


def emotion(root: Path, subject: str, seq: str, code: int) -> None:
    d = root / "Emotion" / subject / seq
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{subject}_{seq}_00000008_emotion.txt").write_text(f"   {code:.7e}\n")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mmi_session(
    root: Path, n: int, sid: str, view: int | None, emotion_code: int | None, subject: str | None
) -> None:
    d = root / "Sessions" / str(n)
    clip(d / f"{sid}.mp4", width=96 if view == 2 else 64, seed=n)
    subj = f'<subject id="{subject}" />' if subject else ""
    track = f'<track id="0" type="Video" view="{view}" />' if view is not None else ""
    (d / "session.xml").write_text(
        f'<?xml version="1.0"?><session sessionId="{n}" mediaFile="{sid}.avi">'
        f"{subj}{track}</session>"
    )
    tags = '<Metatag Name="AU" Value="12" />'
    if emotion_code is not None:
        tags += f'<Metatag Name="Emotion" Value="{emotion_code}" />'
    (d / f"{sid}.xml").write_text(f"<Annotation>{tags}</Annotation>")


# ----------------------------------------------------------------------------------------------
# DFEW, FERV39k, MAFW: split files + clips, re-encoded (.mp4 made here) or raw frame folders
# ----------------------------------------------------------------------------------------------


def frame_folder(path: Path, frames: int, seed: int, name: str = "{:05d}.jpg") -> Path:
    """A raw clip as a folder of image frames (``name`` formats the 1-based frame number)."""
    path.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(make_frames(32, 32, frames, seed=seed), 1):
        Image.fromarray(img).save(path / name.format(i), quality=90)
    return path


def put_clip(clip_dir: Path, key: str, seed: int, frames: str | None, garbled: bool) -> None:
    """Clip ``key`` under ``clip_dir``: ``key.mp4`` as reencode.sh writes it (frames None) or a
    raw folder ``key/`` of frames named by the pattern ``frames`` (e.g. ``"{:05d}.jpg"``);
    ``garbled``: random bytes instead (an unreadable clip / undecodable frames)."""
    if frames is not None:
        for i in range(1, 4) if garbled else ():
            garbage(clip_dir / key / frames.format(i))
        if not garbled:
            frame_folder(clip_dir / key, 6, seed, frames)
    elif garbled:
        garbage(clip_dir / f"{key}.mp4")
    else:
        clip(clip_dir / f"{key}.mp4", width=32, height=32, frames=6, seed=seed)


def one_test_set(label: str, k: int) -> tuple[str, str, set[int], set[int]]:
    """A clip labelled ``label``, a test clip of set ``k`` and a train clip of the others."""
    return label, label, {k}, ALL - {k}


# DFEW clip number -> (label code in train files, label code in test files, test sets, train sets)
ALL = {1, 2, 3, 4, 5}
DFEW_SPEC: dict[int, tuple[str, str, set[int], set[int]]] = {
    **{i: one_test_set(str((i - 1) % 7 + 1), (i - 1) % 5 + 1) for i in range(1, 9)},
    9: ("2", "2", {1, 2}, {3, 4, 5}),  # a test clip in two sets
    10: ("3", "3", {1}, ALL),  # train and test in set 1
    11: ("8", "8", {3}, ALL - {3}),  # unknown label
    13: ("4", "4", {3}, ALL - {3}),  # missing on disk
    14: ("3", "2", {4}, ALL - {4}),  # labels disagree
    15: ("5", "5", {5}, {1, 3, 4}),  # absent from the train file of set 2
    16: ("6", "6", {1}, ALL - {1}),  # unreadable clip
    18: ("1", "1", set(), ALL),  # train clip in no test set
}  # fmt: skip
DFEW_GOOD = {i: (DFEW_SPEC[i][0], tuple(DFEW_SPEC[i][2])) for i in (*range(1, 9), 15)}


def dfew_tree(root: Path, ext: str | None = None) -> Path:
    """A DFEW tree: ``EmoLabel_DataSplit`` (the test files as ``test(single-labeled)``, the train
    files in the README's spelling ``train(single_labeled)``, set_1 of the test files with a
    UTF-8 BOM) and ``Clip/clip_224x224``: clips 1-18 but 13 (missing), 17 on disk in no split;
    ``.mp4`` clips, or with ``ext`` raw frame folders ``00001/00001_00001.jpg`` ...."""
    split = root / "EmoLabel_DataSplit"
    for k in ALL:
        for role, folder in (("train", "train(single_labeled)"), ("test", "test(single-labeled)")):
            rows = [
                f"{i},{spec[0] if role == 'train' else spec[1]}"
                for i, spec in DFEW_SPEC.items()
                if k in (spec[3] if role == "train" else spec[2])
            ]
            path = split / folder / f"set_{k}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            bom = "\ufeff" if (k, role) == (1, "test") else ""
            path.write_text(bom + "video_name,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    clips = root / "Clip" / "clip_224x224"
    for i in (*DFEW_SPEC, 17):
        if i != 13:
            frames = f"{i:05d}_{{:05d}}{ext}" if ext else None
            put_clip(clips, f"{i:05d}", i, frames, i == 16)
    (clips.parent / ".DS_Store").write_bytes(b"\0junk")
    return root


# FERV39k clip -> (split file lines naming it as "role label")
FERV39K_SPEC: dict[str, list[tuple[str, str]]] = {
    "Action/Happy/0000": [("train", "Happy")],
    "Action/Happy/0001": [("test", "Happy")],
    "Action/Sad/0000": [("train", "Sad")],
    "Argue/Neutral/0003": [("test", "Neutral")],
    "Argue/Angry/0002": [("train", "Angry")],
    "Business/Surprise/0000": [("test", "Surprise")],
    "Business/Disgust/0001": [("train", "Disgust")],
    "Crime/Fear/0000": [("test", "Fear")],
    "Action/Happy/0002": [("train", "Happy"), ("test", "Happy")],  # train and test
    "Action/Sad/0005": [("train", "Sadness")],  # unknown label
    "Argue/Fear/0009": [("test", "Fear")],  # missing on disk
    "Crime/Angry/0004": [("train", "Angry"), ("train", "Disgust")],  # twice, labels disagree
    "Business/Happy/0003": [("test", "Happy")],  # unreadable
}
FERV39K_GOOD = {k: v[0] for k, v in list(FERV39K_SPEC.items())[:8]}


def ferv39k_tree(root: Path, ext: str | None = None) -> Path:
    """A FERV39k tree: ``4_setups/All_scenes/{train,test}_All.csv`` and ``2_ClipsforFaceCrop``;
    a line without label, a clip path leaving the root, Crime/Happy/0007 on disk in no split;
    ``.mp4`` clips, or with ``ext`` raw frame folders ``Action/Happy/0000/00001.jpg`` ...."""
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for key, uses in FERV39K_SPEC.items():
        for role, label in uses:
            lines[role].append(f"{key} {label}")
    lines["train"] += ["Action/Happy/0010", "../Action/Happy/0000 Happy"]
    setups = root / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    for role, rows in lines.items():
        (setups / f"{role}_All.csv").write_text("\n".join(rows) + "\n")
    clips = root / "2_ClipsforFaceCrop"
    for n, key in enumerate([*FERV39K_SPEC, "Crime/Happy/0007"]):
        if key != "Argue/Fear/0009":
            frames = f"{{:05d}}{ext}" if ext else None
            put_clip(clips, key, 100 + n, frames, key == "Business/Happy/0003")
    return root


MAFW_CLASSES = (
    "anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt",
    "anxiety", "helplessness", "disappointment",
)  # fmt: skip
# MAFW clip number -> (label in train files, label in test files, test sets, train sets)
MAFW_SPEC: dict[int, tuple[str, str, set[int], set[int]]] = {
    **{i: one_test_set(c, (i - 1) % 5 + 1) for i, c in enumerate(MAFW_CLASSES, 1)},
    12: ("fear", "fear", {1, 3}, {2, 4, 5}),  # a test clip in two sets
    13: ("Happy", "Happy", {2}, ALL - {2}),  # a DFEW label name: unknown
    14: ("sadness", "sadness", {4}, ALL - {4}),  # missing on disk
    16: ("anger", "anger", {5}, ALL - {5}),  # unreadable
    17: ("contempt", "anger", {2}, ALL - {2}),  # labels disagree
}  # fmt: skip
MAFW_GOOD = {i: (MAFW_SPEC[i][0], tuple(MAFW_SPEC[i][2])) for i in range(1, 12)}


def mafw_tree(root: Path, ext: str | None = None) -> Path:
    """A MAFW tree as released: ``Train & Test Set/single/no_caption/set_K/{train,test}.txt``
    (``00001.mp4 anger``, the test files with CRLF line ends) and ``data/clips``; 15 on disk in
    no split (as MAFW's multi-label clips are); ``.mp4`` clips, or with ``ext`` raw frame
    folders ``data/frames/00001/img_0001.jpg`` ...."""
    split = root / "Train & Test Set" / "single" / "no_caption"
    for k in ALL:
        for role in ("train", "test"):
            rows = [
                f"{i:05d}.mp4 {spec[0] if role == 'train' else spec[1]}"
                for i, spec in MAFW_SPEC.items()
                if k in (spec[3] if role == "train" else spec[2])
            ]
            path = split / f"set_{k}" / f"{role}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            end = "\r\n" if role == "test" else "\n"
            path.write_bytes((end.join(rows) + end).encode())
    clips = root / "data" / ("frames" if ext else "clips")
    for i in (*MAFW_SPEC, 15):
        if i != 14:
            frames = f"img_{{:04d}}{ext}" if ext else None
            put_clip(clips, f"{i:05d}", 200 + i, frames, i == 16)
    return root
