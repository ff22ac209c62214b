"""A short seeded run of the `coviar` fuzzer (`benchmarks/fuzz_coviar.py`).

Every damaged MPEG-4 stream must give a well-formed result or FileNotFoundError / ValueError /
IndexError: never another exception, a wrong shape, a crash or a hang. The calls run in the
fuzzer's worker process, so a segfault fails this test and not the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.fuzz_coviar import fuzz

# Inputs (campaign seed, input number) that found defects, now fixed: an .avi whose video stream
# has a codec id FFmpeg cannot decode (AttributeError), and a raw stream whose damaged VOL header
# sets colour tags that swscale refuses (av.error.OSError). They are regenerated from the seed
# clips and the mutation list, so they stay these inputs only while both stay as they are.
REGRESSIONS = [(0, 29), (3, 20086)]


def test_damaged_streams_give_only_clean_errors(tmp_path: Path) -> None:
    out = tmp_path / "findings"
    s = fuzz(50, seed=20240607, count=300, out=out, replay=REGRESSIONS, log=lambda _: None)
    details = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert not s.findings, json.dumps(details[:5], indent=1)
    assert s.inputs >= 100, f"only {s.inputs} inputs in {s.seconds:.0f} s"
    # the campaign reached both the decoding paths and the error paths
    for outcome in ("load_many: ok", "load_many: ValueError", "load: IndexError"):
        assert s.outcomes[outcome] > 0, s.outcomes
