"""``attnkit detect RUN IMAGE``: detect the items on a greyscale canvas with a trained detection
run; ``--out`` writes the detections and, for DETR, each one's cross-attention over the image."""

from __future__ import annotations

import argparse

from ._args import output_file, picture_formats, shown


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)}; expected a number from 0 to 1") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{shown(text)}; expected a number from 0 to 1 (1 excluded)")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect the items in an image with a trained detection run")
    p.add_argument("run", metavar="RUN", help="a detect run folder written by 'attnkit train detect'")
    p.add_argument("image", metavar="IMAGE", help="a greyscale PNG of the run's canvas size (64x64 by default), "
                                                  "light items on a dark ground")
    p.add_argument("--threshold", type=_probability, default=0.5,
                   help="report detections whose score is above this (default 0.5)")
    p.add_argument("--out", type=output_file(picture_formats, "picture"), default=None,
                   help="write the detections with their cross-attention here (.png, .svg, .pdf)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.vision.common import read_image
    from ..apps.vision.data import CLASSES
    from ..apps.vision.detect import detect_images, detection_picture, load_run

    lr = load_run(args.run)
    image = read_image(args.image, lr.side)
    if args.out is not None:
        made, (boxes, labels, scores) = detection_picture(lr, image, args.out, threshold=args.threshold)
    else:
        boxes, labels, scores = detect_images(lr.model, image[None, None].float() / 255.0,
                                              threshold=args.threshold)[0]
    if len(labels) == 0:
        print(f"no item scored above {args.threshold}")
    for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
        print(f"{CLASSES[label]:<11s} {score:.3f}  box x0={box[0]:.1f} y0={box[1]:.1f} x1={box[2]:.1f} y1={box[3]:.1f}")
    if args.out is not None:
        print(f"wrote {made}")
    return 0
