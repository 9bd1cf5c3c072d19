"""Pictures and the HTML report stay bounded and labelled at long inputs (128+ tokens)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("matplotlib")

from attnkit.interpret import attention_rollout, head_grid, lines_view, matrix_view, model_overview, render_html  # noqa: E402
from attnkit.interpret import plot as plot_mod  # noqa: E402


def random_attention(layers: int, heads: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(layers, heads, t, t, generator=g) * 2, -1)  # (L, H, T, T)


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib Figures the views save, kept for inspection."""
    saved = []
    real = plot_mod._save

    def keep(fig, path):
        saved.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plot_mod, "_save", keep)
    return saved


def png_size(path) -> tuple[int, int]:
    import matplotlib.image as mpimg

    height, width = mpimg.imread(path).shape[:2]
    return width, height


def assert_bounded(path) -> None:
    width, height = png_size(path)
    assert max(width, height) <= plot_mod.MAX_SIDE_PX and width * height <= plot_mod.MAX_PIXELS, (width, height)
    assert min(width, height) >= 300


def labels(fig) -> tuple[set[str], set[str], list]:
    """x labels, y labels and colour-bar axes of a figure."""
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    plain = [ax for ax in fig.axes if ax not in bars]
    return {ax.get_xlabel() for ax in plain}, {ax.get_ylabel() for ax in plain}, bars


@pytest.mark.parametrize("t", [9, 160])
def test_heatmaps_bounded_with_axis_titles_and_colour_bar(t, tmp_path, figures):
    att = random_attention(2, 4, t)
    tokens = [f"tok{i}" for i in range(t)]
    assert_bounded(head_grid(att[0], tokens, tmp_path / "grid.png", title="layer 0"))
    assert_bounded(matrix_view(attention_rollout(att), tokens, tmp_path / "roll.png", title="rollout"))
    assert_bounded(model_overview(att, tmp_path / "overview.png"))
    for fig in figures:
        xs, ys, bars = labels(fig)
        assert len(bars) == 1 and "weight" in bars[0].get_ylabel()
    for fig in figures[:2]:  # the heatmaps with tokens: "query" rows, "key" columns, token tick labels
        xs, ys, _ = labels(fig)
        assert any(x.startswith("key") for x in xs) and any(y.startswith("query") for y in ys)
        ax = next(a for a in fig.axes if a.get_xlabel().startswith("key"))
        ticks = [lab.get_text() for lab in ax.get_xticklabels()]
        assert ticks[0] == "tok0" and all(tick in tokens for tick in ticks if tick)
        if t > 100:  # too many to label each: every k-th, and the axis title says so
            assert len(ticks) < t and "labelled" in ax.get_xlabel()
        else:
            assert ticks == tokens
    suptitle = figures[2]._suptitle.get_text()
    assert "layers" in suptitle and ("averaged" in suptitle) == (t > plot_mod.OVERVIEW_CELLS)


def test_long_heatmap_is_pooled_and_says_so(tmp_path, figures):
    t = 2 * plot_mod.MAX_CELLS + 5
    m = torch.rand(t, t)
    path = matrix_view(m, None, tmp_path / "long.png", title="long")
    assert_bounded(path)
    ax = figures[0].axes[0]
    assert "3x3 tokens averaged per cell" in ax.get_title()
    assert ax.images[0].get_array().shape == (t // 3 + 1, t // 3 + 1)
    # pooled cells are means of the tokens they cover
    assert ax.images[0].get_array()[0, 0] == pytest.approx(float(m[:3, :3].mean()), rel=1e-5)


def test_lines_view_pools_long_inputs_and_has_a_legend(tmp_path, figures):
    t = 150
    att = random_attention(1, 3, t)[0]
    path = lines_view(att, [f"w{i}" for i in range(t)], tmp_path / "lines.png", title="layer 0")
    assert_bounded(path)
    fig = figures[0]
    (ax,) = fig.axes
    assert "[4 consecutive tokens pooled per row" in ax.get_title()
    texts = [x.get_text() for x in ax.texts]
    assert "query" in texts and "key" in texts and "0-3 w0" in texts and "148-149 w148" in texts
    assert len(texts) == 2 + 2 * 38  # 38 groups a side
    (legend,) = fig.legends
    assert [x.get_text() for x in legend.get_texts()] == ["head 0", "head 1", "head 2"]


def test_lines_view_short_input_keeps_every_token(tmp_path, figures):
    att = random_attention(1, 2, 6)[0]
    lines_view(att, list("abcdef"), tmp_path / "lines.png", heads=[1])
    texts = [x.get_text() for x in figures[0].axes[0].texts]
    assert texts.count("a") == 2 and texts.count("f") == 2
    with pytest.raises(Exception, match="heads \\[5\\] out of range"):
        lines_view(att, list("abcdef"), tmp_path / "bad.png", heads=[5])


def test_html_is_bounded_at_128_tokens_and_pooled_beyond():
    att = random_attention(6, 12, 128)  # all-MiniLM-L6-v2's shape at --max-tokens 128
    text = render_html(att, [f"t{i}" for i in range(128)], rollout=attention_rollout(att))
    assert len(text.encode("utf-8")) < 2_000_000
    assert "pooled" not in text.split("<script")[0]  # 128 tokens fit: every token kept
    long = random_attention(6, 12, 300, seed=1)
    text = render_html(long, [f"t{i}" for i in range(300)])
    assert len(text.encode("utf-8")) < 2_000_000
    assert "The 300 tokens are pooled in 100 groups of 3 consecutive tokens" in text


def test_html_refuses_nan():
    from attnkit.errors import AttnKitError

    att = random_attention(1, 1, 4)
    att[0, 0, 1, 2] = float("nan")
    with pytest.raises(AttnKitError, match="1 non-finite"):
        render_html(att, list("abcd"))


def test_mask_picture_says_which_colour_attends(tmp_path):
    from attnkit.masks import patterns
    from attnkit.masks.plot import plot_mask, save_mask

    for size, want in [(48, ["masked", "attend"]), (1024, ["0 masked", "0.01", "0.1", "0.5", "1 attend"])]:
        ax = plot_mask(patterns.sliding_window(4), size)
        (bar,) = [a for a in ax.figure.axes if a.get_label() == "<colorbar>"]
        assert [lab.get_text() for lab in bar.get_yticklabels()] == want
        assert ax.get_xlabel() == "key j" and ax.get_ylabel() == "query i"
        ax.figure.clf()
    width, height = png_size(save_mask(patterns.strided(8), tmp_path / "m.png", 4096, 1024))
    assert max(width, height) <= 1500 and width * height <= 1_500_000
