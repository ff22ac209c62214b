"""train.py's options: what a run's options make of it (its variant's name)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any


def variant_ablation(options: Mapping[str, Any]) -> str:
    """The row of the paper's table that a run's options make (mic, mic-mi, mic-mi+adv, mic+mv,
    rgb, ...), whatever its backbone: `options` as result.json stores them (`train.options`),
    those it lacks (runs older than an option) taken as not given."""
    on = options.get
    if on("baseline") == "rgb":
        return "rgb"
    name = "mic" + ("-mi" if on("no_mi") else "") + ("+adv" if on("adv") else "")
    name += ("+placebo" if on("mi_placebo") else "") + ("+cond" if on("mi_conditional") else "")
    return name + ("-rec" if on("no_rec") else "") + ("+mv" if on("with_mv") else "")


def variant_name(args: argparse.Namespace) -> str:
    """The default variant name: its row of the paper's table (`variant_ablation`), with the
    backbone when not ResNet50 (mic, mic-mi+resnet6, ...)."""
    return variant_ablation(vars(args)) + ("" if args.backbone == "resnet50"
                                           else f"+{args.backbone}")
