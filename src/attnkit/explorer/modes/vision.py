"""Vision mode: a ViT classifying a Fashion-MNIST test image, and a captioner describing a scene.

Two models of :mod:`attnkit.apps.vision`, picked with the ``model`` field:

* ``vit``: the quick ViT on test image ``index`` (the Fashion-MNIST test set from Debian's
  ``dataset-fashion-mnist``). Views: ``attention`` (every layer and head over the class token and
  the 7 x 7 patches) and ``rollout`` (:func:`attnkit.interpret.attention_rollout` of all layers;
  row 0, the class token, is the classifier's rollout map).
* ``caption``: the quick attention captioner on held-out scene ``scene``. Views: ``cross`` (each
  generated word's cross-attention over the image patches), ``decoder`` (the words' causal
  self-attention) and ``encoder`` (the patches' self-attention).

The image travels in ``info["picture"]`` (one byte per pixel, with the patch grid and, per view,
the column where the patches start) so the page can draw it beside the heatmap and lay a row's
attention over it. The models are the run folders given to ``attnkit serve --run vit=PATH --run
caption=PATH``, else the quick runs trained once under ``$ATTNKIT_CACHE/runs`` on first use
(:func:`attnkit.apps.vision.demo.cached_run`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..api import Analysis, RequestError, View, encode_picture
from ._base import Input, Mode

__all__ = ["VisionMode", "MODE", "N_TEST", "N_SCENES"]

N_TEST = 10_000  # images in the Fashion-MNIST test split
N_SCENES = 300  # held-out scenes offered (the demo's set)


def _patch_labels(grid: int) -> list[str]:
    return [f"r{r}c{c}" for r in range(grid) for c in range(grid)]


class VisionMode(Mode):
    name = "vision"
    title = "Vision"
    order = 40
    help = ("Pick a model and an image. ViT: rows and columns are the class token and the image's patches; the "
            "rollout's first row is what the classification draws on. Captioner: rows are the generated words, "
            "columns the image's patches. Hover a row (or select tokens) to lay its attention over the image.")

    optional_apps = ("vit", "caption")  # attnkit serve --run vit=PATH --run caption=PATH replace the quick runs

    def __init__(self, run: str | Path | None = None, *, vit: str | Path | None = None,
                 caption: str | Path | None = None):
        super().__init__(run)
        self.vit_run, self.caption_run = vit, caption
        self._vit: Any = None
        self._caption: Any = None
        self._scenes: list[Any] | None = None
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None
        self.lock = threading.Lock()
        if vit is not None:  # a given run folder is checked now, as the translation mode does
            self._load_vit()
        if caption is not None:
            self._load_captioner()

    @property
    def inputs(self) -> list[Input]:
        return [Input("model", "model", "select", default="vit", choices=("vit", "caption")),
                Input("index", "Fashion-MNIST test image", "int", default=0, low=0, high=N_TEST - 1,
                      when={"model": ["vit"]}),
                Input("scene", "held-out scene", "int", default=0, low=0, high=N_SCENES - 1,
                      when={"model": ["caption"]})]

    def parse(self, body: Mapping[str, Any]) -> dict[str, Any]:
        out = super().parse(body)
        # the other model's field does not change the analysis: drop it so equal requests share one
        out["scene" if out["model"] == "vit" else "index"] = None
        return out

    def extra_description(self) -> dict[str, Any]:
        return {"images": N_TEST, "scenes": N_SCENES}

    # -- the models, loaded (and trained once) on first use -------------------------------------------
    def _require_data(self) -> None:
        from ...apps.vision.data import DataMissing, require_data

        try:
            require_data("fashion-mnist")
        except DataMissing as exc:
            raise RequestError(str(exc), 503) from None

    def _load_vit(self) -> None:
        from ...apps.vision import classify
        from ...apps.vision.demo import cached_run
        from ...apps.vision.vit import ViT

        lr = classify.load_run(self.vit_run or cached_run("vit", log=lambda *_: None))
        if not isinstance(lr.model, ViT):
            raise RequestError(f"the classifier in {lr.run.path} is a {lr.config['model']['kind']!r}, which has no "
                               "attention; expected a 'vit' or 'vit-neighborhood' run", 409)
        self._vit = lr

    def _load_captioner(self) -> None:
        from ...apps.vision import caption
        from ...apps.vision.demo import cached_run

        lr = caption.load_run(self.caption_run or cached_run("caption", log=lambda *_: None))
        if not lr.model.attends:
            raise RequestError(f"the captioner in {lr.run.path} is the {lr.model.config.kind!r} model, which has "
                               "no attention over the image; expected an 'attention' captioner run", 409)
        self._caption = lr

    def vit(self) -> Any:
        """The ViT run (:class:`attnkit.apps.vision.classify.LoadedRun`), trained once if none was given."""
        if self._vit is None:
            self._require_data()
            self._load_vit()
        return self._vit

    def captioner(self) -> Any:
        """The captioner run (:class:`attnkit.apps.vision.caption.LoadedRun`), trained once if none was given."""
        if self._caption is None:
            self._require_data()
            self._load_captioner()
        return self._caption

    def test_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The Fashion-MNIST test split: images ``(10000, 28, 28)`` uint8 and labels ``(10000,)``."""
        if self._test is None:
            from ...apps.vision.data import load_fashion_mnist

            self._test = load_fashion_mnist("test")
        return self._test

    def scenes(self) -> list[Any]:
        if self._scenes is None:
            from ...apps.vision.common import load_scenes

            self._scenes = load_scenes("test", N_SCENES)
        return self._scenes

    def warm(self) -> None:
        """Load the models that need no training (given runs, or quick runs already cached); the
        first vision request trains the missing ones, so the server starts at once."""
        from ...apps.vision.data import data_status
        from ...apps.vision.demo import cached_path

        if data_status()["fashion-mnist"] != "installed":
            return  # each request then says what to install
        with self.lock:
            if self.vit_run is not None or (cached_path("vit") / "results.json").exists():
                self.vit()
                self.test_images()
            if self.caption_run is not None or (cached_path("caption") / "results.json").exists():
                self.captioner()
                self.scenes()

    def train(self) -> None:
        """Load both models, training the quick runs that are not cached yet (about 20 s on 2 cores)."""
        with self.lock:
            self.vit()
            self.captioner()

    # -- the analyses ---------------------------------------------------------------------------------
    def analyse(self, inputs: Mapping[str, Any], key: str) -> Analysis:
        with self.lock, torch.inference_mode():
            if inputs["model"] == "vit":
                return self._analyse_vit(inputs["index"], key)
            return self._analyse_caption(inputs["scene"], key)

    def _analyse_vit(self, index: int, key: str) -> Analysis:
        from ...apps.vision.classify import normalize
        from ...apps.vision.data import CLASSES
        from ...interpret import attention_rollout, capture_attention

        lr = self.vit()
        images, labels = self.test_images()
        image = images[index]  # (28, 28) uint8
        with capture_attention(lr.model) as cap:
            probs = torch.softmax(lr.model(normalize(image[None])), -1)[0]  # (C,)
        att = cap.stack()[:, 0].float()  # (L, H, T, T)
        grid = lr.model.config.grid
        toks = ["[CLS]", *_patch_labels(grid)]
        rollout = attention_rollout(att)  # (T, T)
        views = {"attention": View("ViT self-attention (class token and patches)", att, toks, toks),
                 "rollout": View("rollout (all layers, heads averaged, residual)", rollout[None, None], toks, toks,
                                 ["all layers"])}
        pred = int(probs.argmax())
        picture = encode_picture(image.float(), "image", grid=[grid, grid], patches={"attention": 1, "rollout": 1},
                                 title=f"Fashion-MNIST test image {index}")
        info = {"tokens": toks, "notices": [], "picture": picture,
                "numbers": {"image": f"test {index}", "true class": CLASSES[int(labels[index])],
                            "predicted": CLASSES[pred], "probability": round(float(probs[pred]), 4),
                            "patch rollout share": round(float(rollout[0, 1:].sum()), 4),
                            "run": str(lr.run.path)}}
        return Analysis(key, self.name, views, info)

    def _analyse_caption(self, index: int, key: str) -> Analysis:
        from ...apps.translation.tokenizer import BOS, EOS
        from ...apps.vision.caption import caption_images
        from ...interpret import capture_attention

        lr = self.captioner()
        scene = self.scenes()[index]
        x = scene.image[None, None].float() / 255.0  # (1, 1, S, S)
        text = caption_images(lr.model, lr.vocab, x)[0]
        ids = lr.vocab.encode(text) + [EOS]
        words = [*lr.vocab.words(text), "</s>"]
        tgt_in = torch.tensor([[BOS, *ids[:-1]]])  # (1, T)
        with capture_attention(lr.model) as cap:
            lr.model(x, None, tgt_in)
        grid = lr.model.encoder.grid
        patches = _patch_labels(grid)

        def stacked(prefix: str, suffix: str) -> torch.Tensor | None:
            recs = [r.weights[0] for r in cap.records
                    if (r.module or "").startswith(prefix) and (r.module or "").endswith(suffix)]
            return torch.stack(recs).float() if recs else None  # (L, H, Tq, Tk)

        cross = stacked("decoder.", "multihead_attn")
        if cross is None or cross.shape[-2:] != (len(words), len(patches)):
            raise RequestError("the captioner's cross-attention was not recorded; expected one map per word", 500)
        views = {"cross": View("cross-attention (generated words x image patches)", cross, words, patches)}
        decoder = stacked("decoder.", "self_attn")
        if decoder is not None:
            views["decoder"] = View("decoder self-attention (generated words)", decoder, words, words)
        encoder = stacked("encoder.", "self_attn")
        if encoder is not None:
            views["encoder"] = View("encoder self-attention (image patches)", encoder, patches, patches)
        picture = encode_picture(scene.image.float(), "image", grid=[grid, grid],
                                 patches={"cross": 0, "encoder": 0}, title=f"held-out scene {index}")
        info = {"tokens": words, "notices": [], "picture": picture,
                "numbers": {"scene": f"test {index}", "objects": ", ".join(scene.names), "true caption": scene.caption,
                            "generated caption": text, "run": str(lr.run.path)}}
        return Analysis(key, self.name, views, info)


MODE = VisionMode
