"""The MI game's closed-form references (benchmarks/mi_game.py): what removing the pool's own
identity directions leaves of the true MI, and the identity outside the pool's span."""

import torch

from benchmarks.mi_game import make_toy, parse_args, pool_references

SMALL = ["--dx", "24", "--dz", "16", "--k", "2", "--dy", "8", "--identity-rows", "6"]


def references(pool: int, seed: int = 0) -> tuple[float, dict[str, float]]:
    args = parse_args([*SMALL, "--pool", str(pool), "--identity-scale", "0.3", "--seed", str(seed)])
    toy = make_toy(args)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(args.dz, args.dx, generator=g, dtype=torch.float64)
    x, c, y = toy.sample(args.pool, g)
    return toy.true_mi(w.numpy()), pool_references(toy, w, x, c, y, dims=args.k)


def test_a_large_pool_shows_all_of_the_identity():
    start, ref = references(20000)
    assert start > 0.5
    assert ref["out of the pool's reach"] == 0.0  # 20000 clips span x
    assert ref["the pool's identity directions removed"] < 0.02 * start


def test_a_small_pool_leaves_identity_it_cannot_see():
    # 12 clips of a 24-d x: half of x's directions are outside the pool, and 12 noisy pairs give
    # the identity directions only roughly: more of the MI stays than with many clips.
    start, ref = references(12)
    _, large = references(20000)
    assert 0.05 * start < ref["out of the pool's reach"] < start
    removed = ref["the pool's identity directions removed"]
    assert removed > 0.2 * start
    assert removed > 10 * large["the pool's identity directions removed"]
