"""``sigma-ros extract``: synchronized RGB-X(-label) frames from rosbag2 bags -> Sigma dataset layout.

    sigma-ros extract BAG [BAG ...] --rgb-topic T --x-topic T --out DIR [--label-topic T] [--slop S]
                      [--every N] [--min-interval S] [--test-fraction F] [--seed N]

See :mod:`sigma_ros.data.extract` for the output layout. Exit status: 0 all bags read, 1 some bag failed
(the frames of the others, and of the failed one up to the failure, are kept), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="rosbag2 bag directories (metadata.yaml + .mcap/.db3) or bare .mcap/.db3 files")
    parser.add_argument("--rgb-topic", required=True, help="RGB image topic (sensor_msgs/Image or CompressedImage)")
    parser.add_argument("--x-topic", required=True, help="thermal or depth image topic")
    parser.add_argument("--out", required=True, help="output dataset directory (created; re-runs resume)")
    parser.add_argument("--label-topic", default=None,
                        help="optional label topic (mono8 or 16UC1 class indices); then only frames with a label "
                             "are written")
    parser.add_argument("--slop", type=float, default=0.05,
                        help="max stamp difference in seconds between paired messages (inclusive; default 0.05)")
    parser.add_argument("--queue-size", type=int, default=30, help="synchronizer queue per topic (default 30)")
    parser.add_argument("--every", type=int, default=1, help="keep every N-th synchronized pair (default 1)")
    parser.add_argument("--min-interval", type=float, default=0.0,
                        help="keep pairs at least S seconds apart (by RGB stamp; default 0)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="fraction of frames in test.txt (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    parser.add_argument("--split-block", type=float, default=0.0,
                        help="split whole blocks of S seconds instead of single frames, so near-identical "
                             "neighbouring frames do not end up on both sides (default 0: per frame)")
    parser.add_argument("--stamp", choices=("header", "bag"), default="header",
                        help="pair by message header stamps (default) or by bag receive time")
    parser.add_argument("--modality", choices=("auto", "thermal", "depth"), default="auto",
                        help="what the X topic is (auto: 32FC1/16UC1 -> depth, else thermal); sets the resize "
                             "filter and the manifest's modality")
    parser.add_argument("--depth-scale", type=float, default=1000.0,
                        help="32FC1 depth (metres) is stored as uint16 round(d * scale); default 1000 = mm")
    parser.add_argument("--workers", type=int, default=0,
                        help="PNG writer threads (default 0: min(8, CPU count))")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from sigma_ros.data.extract import ExtractConfig, extract

    cfg = ExtractConfig(
        rgb_topic=args.rgb_topic, x_topic=args.x_topic, label_topic=args.label_topic, slop=args.slop,
        queue_size=args.queue_size, every=args.every, min_interval=args.min_interval,
        test_fraction=args.test_fraction, seed=args.seed, split_block=args.split_block, stamp=args.stamp,
        modality=args.modality, depth_scale=args.depth_scale, workers=args.workers, progress=not args.quiet)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        summary = extract(args.bags, args.out, cfg, log=log)
    except ValueError as e:
        log(f"sigma-ros extract: error: {e}")
        return 2
    print(summary.format(slop=cfg.slop), flush=True)
    return 1 if summary.failed else 0
