"""``attnkit caption RUN IMAGE``: caption a greyscale canvas with a trained captioning run;
``--out`` writes the "show, attend and tell" picture (each word's cross-attention over the image)."""

from __future__ import annotations

import argparse

from ._args import add_beam_options, output_file, picture_formats


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption an image with a trained captioning run")
    p.add_argument("run", metavar="RUN", help="a caption run folder written by 'attnkit train caption'")
    p.add_argument("image", metavar="IMAGE", help="a greyscale PNG of the run's canvas size (64x64 by default), "
                                                  "light items on a dark ground")
    add_beam_options(p)
    p.add_argument("--out", type=output_file(picture_formats, "picture"), default=None,
                   help="write the cross-attention picture of the caption here (.png, .svg, .pdf)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.vision.caption import caption_images, caption_picture, load_run
    from ..apps.vision.common import read_image

    lr = load_run(args.run)
    image = read_image(args.image, lr.side)
    text = caption_images(lr.model, lr.vocab, image[None, None].float() / 255.0, beam=args.beam,
                          length_penalty=args.length_penalty)[0]
    print(text)
    if args.out is not None:
        made = caption_picture(lr, image, args.out, caption=text)
        print(f"wrote {made}" if made else f"no picture: the {lr.config['model']['kind']} model does not attend "
                                           "over the image")
    return 0
