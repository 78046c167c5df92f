"""The ``sigma-ros`` command: one entry point, one sub-command per tool.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their sub-command runs, so ``sigma-ros info`` stays quick.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "info": ("sigma_ros.tools.info", "model size, FLOPs, scan backend and device"),
    "extract": ("sigma_ros.tools.extract", "extract synchronized RGB-X pairs from rosbag2 bags"),
    "train": ("sigma_ros.tools.train", "train or fine-tune Sigma on an RGB-X dataset"),
    "eval": ("sigma_ros.tools.evaluate", "evaluate a checkpoint: mIoU, per-class IoU, confusion matrix"),
    "segment-bag": ("sigma_ros.tools.segment_bag", "run a checkpoint over a bag, write label/color/overlay topics"),
    "pseudo-label": ("sigma_ros.tools.pseudo_label", "write draft Label/ PNGs for an extracted dataset"),
    "demo": ("sigma_ros.tools.demo", "see it work: node + synthetic camera, or one real image pair"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sigma-ros", description="Sigma RGB-X segmentation tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen:  # only the chosen tool's module (and its heavy imports) is loaded
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args()
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
