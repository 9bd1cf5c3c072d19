"""The attention explorer under load, and how fast its page draws (``attnkit serve``).

Starts the explorer in this process on a free loopback port (uvicorn in a thread) and measures:

* **load**: ``--requests`` requests from ``--clients`` concurrent httpx clients, each on its own
  connection: a mix of analyses (stored after the first), single heads, overviews and token
  selections on 4 sentences; then ``--fresh`` new analyses at once (each a model forward; the
  model runs one forward at a time). Latencies p50 / p95 / max; failures are counted.
* **render** (``--browser``): Debian's chromium (playwright) types a 512-token text and reports the
  time from pressing the button to the first heatmap drawn, and the fetch / decode / draw times
  of switching heads (``performance.now()`` in the page). ``--shots DIR`` also writes the
  screenshots ``explorer-*.png`` (``--run translation=PATH`` adds the translation mode).

    python benchmarks/bench_explorer.py                       # load test; writes results/explorer.json
    python benchmarks/bench_explorer.py --browser --shots docs/images --run translation=runs/x

Numbers depend on the machine and its load; the JSON records the torch thread count and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SENTENCES = ["The cat sat on the mat because it was tired.", "Heavy rain caused flooding in several villages.",
             "She has been learning to play the violin since she was six years old.",
             "Tickets for the concert sold out within ten minutes."]
LONG_TEXT = "Attention lets every token look at every other token. " * 60  # well over 512 tokens
CHROMIUM = "/usr/bin/chromium"
SETTLE_S = 5.0  # seconds the page is left alone after it is ready, before the timed runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(app) -> tuple[str, object]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def percentiles(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"p50_ms": round(statistics.median(s), 1), "p95_ms": round(s[min(len(s) - 1, int(0.95 * len(s)))], 1),
            "max_ms": round(s[-1], 1)}


def load_test(url: str, requests: int, clients: int, fresh: int) -> dict:
    import httpx

    with httpx.Client(base_url=url, timeout=300) as c:
        keys = [c.post("/api/run", json={"mode": "text", "inputs": {"text": s}}).json()["key"] for s in SENTENCES]

    def one(c, i: int) -> tuple[int, float]:
        key, t0, kind = keys[i % len(keys)], time.perf_counter(), i % 4
        if kind == 0:
            r = c.post("/api/run", json={"mode": "text", "inputs": {"text": SENTENCES[i % len(SENTENCES)]}})
        elif kind == 1:
            r = c.get("/api/matrix", params={"key": key, "view": "attention", "layer": i % 6, "head": i % 12})
        elif kind == 2:
            r = c.get("/api/overview", params={"key": key, "view": "attention", "cells": 48})
        else:
            r = c.post("/api/select", json={"key": key, "view": "attention", "layer": 2, "head": "mean",
                                            "tokens": [1, 2, 3]})
        return r.status_code, (time.perf_counter() - t0) * 1000

    per_client = -(-requests // clients)

    def client(n: int) -> list[tuple[int, float]]:
        with httpx.Client(base_url=url, timeout=300) as c:
            return [one(c, n * per_client + i) for i in range(per_client) if n * per_client + i < requests]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        mixed = [r for rs in pool.map(client, range(clients)) for r in rs]
    mixed_wall = time.perf_counter() - t0

    def fresh_run(i: int) -> tuple[int, float]:
        with httpx.Client(base_url=url, timeout=300) as c:
            text = f"Sentence number {i} of the fresh batch, never seen before {time.time()}."
            t = time.perf_counter()
            r = c.post("/api/run", json={"mode": "text", "inputs": {"text": text}})
            return r.status_code, (time.perf_counter() - t) * 1000

    t0 = time.perf_counter()
    with ThreadPoolExecutor(fresh) as pool:
        new = list(pool.map(fresh_run, range(fresh)))
    fresh_wall = time.perf_counter() - t0
    return {
        "mixed": {"requests": len(mixed), "clients": clients, "failed": sum(c != 200 for c, _ in mixed),
                  "wall_s": round(mixed_wall, 2), **percentiles([t for _, t in mixed])},
        "fresh_analyses": {"requests": fresh, "failed": sum(c != 200 for c, _ in new), "wall_s": round(fresh_wall, 2),
                           **percentiles([t for _, t in new])},
    }


def render_test(url: str, shots: Path | None, translation: bool) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(url)
        page.wait_for_selector('body[data-ready="1"]', timeout=120_000)
        # chromium keeps working for a few seconds after the page is ready; on a 2-core machine that
        # work slowed the first analysis by about 1.6x (a person does not type 512 tokens that fast)
        time.sleep(SETTLE_S)

        def run(text: str, ready: str, text_b: str | None = None) -> None:
            runs = page.evaluate("explorer.state.runs")
            page.fill("textarea[name=text]", text)
            if text_b is not None:
                page.fill("textarea[name=text_b]", text_b)
            page.click("#run")
            page.wait_for_function(f"explorer.state.runs > {runs}", timeout=300_000)
            page.wait_for_selector(f'#heat-{ready}[data-ready="1"]', timeout=300_000)

        firsts = []
        for i in range(3):  # a new text each time: the analysis is computed, not read from the store
            run(f"Run {i}. " + LONG_TEXT, "attention")
            firsts.append(page.evaluate("explorer.timings"))
        switches = []
        for layer, head in [(0, 1), (3, 7), (5, 11)]:
            page.click(f'#overview canvas[data-layer="{layer}"][data-head="{head}"]')
            page.wait_for_selector(f'#heat-attention[data-layer="{layer}"][data-head="{head}"]', timeout=60_000)
            switches.append(page.evaluate("explorer.timings"))
        out["tokens"] = len(page.evaluate("explorer.heatmap('attention').values")) ** 0.5
        out["first_heatmap_ms"] = [round(t["first_heatmap_ms"]) for t in firsts]
        out["analysis_ms"] = [round(t["run_ms"]) for t in firsts]
        out["all_views_ms"] = [round(t["all_views_ms"]) for t in firsts]  # overview, lines and tokens drawn too
        out["switch_head"] = {k: [round(t[k], 1) for t in switches] for k in ("fetch_ms", "decode_ms", "draw_ms")}
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(shots / "explorer-512.png"))
            run("The animal didn't cross the street because it was too tired.", "attention",
                text_b="It stayed on the pavement.")
            page.click('#overview canvas[data-layer="2"][data-head="5"]')
            page.wait_for_selector('#heat-attention[data-layer="2"][data-head="5"]')
            for i in (2, 11):
                page.click(f'#tokens span[data-i="{i}"]')
            page.wait_for_function("explorer.selection() && explorer.selection().tokens.length === 2")
            page.screenshot(path=str(shots / "explorer-text.png"), full_page=True)
            page.click('#modes button[data-mode="compare"]')
            page.select_option("select[name=method]", "bigbird")
            page.fill("input[name=block]", "2")
            run("The animal didn't cross the street because it was too tired.", "approx")
            page.screenshot(path=str(shots / "explorer-compare.png"), full_page=True)
            if translation:
                page.click('#modes button[data-mode="translation"]')
                run("three hundred twenty-one", "cross")
                page.screenshot(path=str(shots / "explorer-translation.png"), full_page=True)
        browser.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--fresh", type=int, default=20, help="new analyses requested at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--browser", action="store_true", help="also measure the page's render time in chromium")
    p.add_argument("--shots", type=Path, default=None, help="write explorer-*.png screenshots here (with --browser)")
    p.add_argument("--run", action="append", default=[], metavar="APP=PATH", help="application runs, as for serve")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "explorer.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from attnkit.explorer import create_app

    runs = dict(r.split("=", 1) for r in args.run)
    url, server = start_server(create_app(runs, warm=True))
    results = {"machine": {"torch_threads": args.threads, "cpus": os.cpu_count(),
                           "load_average_1min": round(os.getloadavg()[0], 2)},
               "load": load_test(url, args.requests, args.clients, args.fresh)}
    print(json.dumps(results["load"], indent=1))
    if args.browser:
        results["render"] = render_test(url, args.shots, "translation" in runs)
        print(json.dumps(results["render"], indent=1))
    results["machine"]["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    server.should_exit = True
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
