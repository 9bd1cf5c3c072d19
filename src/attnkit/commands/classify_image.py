"""``attnkit classify-image RUN IMAGE``: classify a picture with a trained Fashion-MNIST run (``attnkit
train vit``); ``--out`` writes the attention-rollout overlay of a ViT."""

from __future__ import annotations

import argparse

from ._args import int_range, output_file, picture_formats


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify-image", help="classify a picture (PNG) with a trained Fashion-MNIST run")
    p.add_argument("run", metavar="RUN", help="a run folder written by 'attnkit train vit'")
    p.add_argument("image", metavar="IMAGE", help="the picture (PNG; grey or colour, each side 28 to 4096 pixels); "
                                                  "it is turned grey and shrunk to 28 x 28")
    p.add_argument("--top", type=int_range(1, 10), default=3, help="classes to print (default 3)")
    p.add_argument("--out", type=output_file(picture_formats, "picture"), default=None,
                   help="write the attention-rollout overlay here (.png, .svg, .pdf; ViT runs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.vision.classify import classify_image, load_run, read_image
    from ..apps.vision.data import CLASSES

    lr = load_run(args.run)
    image, inverted = read_image(args.image)
    probs = classify_image(lr.model, image)
    top = probs.topk(args.top)
    for p, c in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{CLASSES[c]:<12} {100 * p:5.1f}%")
    if inverted:
        print("(the picture was inverted: Fashion-MNIST items are light on a dark background)")
    if args.out is not None:
        from ..apps.vision.vit import ViT

        if not isinstance(lr.model, ViT):
            print(f"no picture: the {lr.config['model']['kind']} model has no attention to show")
            return 0
        from ..apps.vision.classify import MEAN, STD
        from ..apps.vision.pictures_vit import rollout_overlay

        c = int(probs.argmax())
        path = rollout_overlay(lr.model, ((image - MEAN) / STD).unsqueeze(0), args.out,
                               title=f"{CLASSES[c]} ({100 * float(probs[c]):.0f}%)")
        print(f"wrote {path}")
    return 0
