"""Tiny re-encoded trees in the real layouts of CK+, MMI and AFEW, with their quirks (shared by
the tests of datasets.py, reader.py and faces.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tests.clips import make_clip

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
