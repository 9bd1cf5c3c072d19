"""The explorer's web application: a Starlette app serving a JSON API and the static page.

Routes (every error is a JSON ``{"error": message}`` with a 4xx status; the server never exits on
a bad request):

========================  =========================================================================
``GET /``                 the page (``static/index.html``); ``/static/...`` its scripts and styles
``GET /api/modes``        the enabled modes, each with its form fields and actions
``POST /api/run``         ``{"mode": ..., "inputs": {...}}`` -> the analysis: key, views, info
``GET /api/matrix``       ``key, view, layer, head (int | mean | all), cells`` -> one matrix as
                          float16 base64, pooled into blocks when longer than ``cells``
``GET /api/overview``     ``key, view, cells`` -> every layer x head as one byte per value
``POST /api/select``      ``{"key", "view", "layer", "head", "tokens": [...]}`` -> summed attention
                          of the selected tokens
``POST /api/action``      ``{"key", "action", "params"}`` -> a mode's extra computation (e.g. flow)
========================  =========================================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import AttnKitError
from .api import (
    MAX_CELLS,
    Analysis,
    RequestError,
    ResultStore,
    analysis_key,
    encode_f16,
    encode_u8,
    pool_blocks,
    token_sums,
)
from .modes import Mode, mode_types

__all__ = ["Explorer", "create_app", "STATIC", "MAX_BODY"]

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024  # bytes of a request body; more is refused with 413
OVERVIEW_CELLS = 64  # default cells per side of each overview panel


class Explorer:
    """The enabled modes and the stored analyses: what the routes work on.

    ``runs`` maps an application name to its run folder (``{"translation": "runs/x"}``); modes
    that need an application not given are left out. A mode may also name applications whose runs
    it takes when given (``optional_apps``: the vision mode's ``vit`` and ``caption``, passed as
    keyword arguments) and otherwise finds itself. Unknown application names are refused.
    """

    def __init__(self, runs: Mapping[str, str | Path] | None = None, *, store: ResultStore | None = None):
        runs = dict(runs or {})
        types = mode_types()
        apps = {cls.app for cls in types.values() if cls.app}
        apps |= {a for cls in types.values() for a in getattr(cls, "optional_apps", ())}
        unknown = sorted(set(runs) - apps)
        if unknown:
            raise AttnKitError(f"--run {unknown[0]}=...: no mode shows {unknown[0]!r} runs; expected one of "
                               f"{', '.join(sorted(apps)) or '(none)'}")
        self.modes: dict[str, Mode] = {}
        for name, cls in types.items():
            if cls.app is None:
                self.modes[name] = cls(**{a: runs[a] for a in getattr(cls, "optional_apps", ()) if a in runs})
            elif cls.app in runs:
                self.modes[name] = cls(runs[cls.app])
        self.store = store or ResultStore()

    def warm(self) -> None:
        """Load every mode's model now rather than on the first request."""
        for mode in self.modes.values():
            mode.warm()

    def mode(self, name: Any) -> Mode:
        if not isinstance(name, str) or name not in self.modes:
            raise RequestError(f"mode {name!r} is not enabled; expected one of {', '.join(self.modes)}", 404)
        return self.modes[name]

    def run(self, body: Mapping[str, Any]) -> Analysis:
        mode = self.mode(body.get("mode"))
        raw = body.get("inputs", {})
        if not isinstance(raw, Mapping):
            raise RequestError(f"inputs must be an object; got {type(raw).__name__}")
        inputs = mode.parse(raw)
        key = analysis_key(mode.name, inputs)
        return self.store.get_or_compute(key, lambda: mode.analyse(inputs, key))


# ----------------------------------------------------------------------------------------------
# request helpers
# ----------------------------------------------------------------------------------------------


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; 413 past :data:`MAX_BODY` bytes, 400 if it is not a JSON object."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise RequestError(f"request body of {length} bytes is too large; expected at most {MAX_BODY}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestError(f"request body is too large; expected at most {MAX_BODY} bytes", 413)
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON ({exc}); expected a JSON object", 400) from None
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object; got {type(body).__name__}", 400)
    return body


def _int(value: Any, name: str, low: int, high: int) -> int:
    """``value`` (a query string or JSON value) as an int in ``[low, high]``; 422 otherwise."""
    if isinstance(value, bool):
        raise RequestError(f"{name} must be an integer; got {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be an integer; got {value!r}") from None
    if not low <= n <= high:
        raise RequestError(f"{name} {n} is out of range; expected {low} to {high}")
    return n


def _head(value: Any, heads: int, allow_all: bool = True) -> int | str:
    if value in ("mean", "all") and (allow_all or value == "mean"):
        return value
    return _int(value, "head", 0, heads - 1)


def _find(explorer: Explorer, params: Mapping[str, Any]) -> tuple[Analysis, Any, int, int | str]:
    """The analysis, view, layer and head a request names."""
    key = params.get("key")
    if not isinstance(key, str) or not key:
        raise RequestError("key is missing; expected the key returned by /api/run")
    analysis = explorer.store.get(key)
    view = analysis.view(str(params.get("view", "")))
    layer = _int(params.get("layer", 0), "layer", 0, view.layers - 1)
    return analysis, view, layer, params.get("head", "mean")


# ----------------------------------------------------------------------------------------------
# the routes
# ----------------------------------------------------------------------------------------------


def create_app(runs: Mapping[str, str | Path] | None = None, *, warm: bool = False,
               explorer: Explorer | None = None) -> Starlette:
    """The explorer as a Starlette app (run it with uvicorn). ``runs``: application run folders
    (``{"translation": PATH}``); ``warm``: load the models now."""
    ex = explorer or Explorer(runs)
    if warm:
        ex.warm()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    async def modes(request: Request) -> Response:
        return JSONResponse({"modes": [m.describe() for m in ex.modes.values()]})

    def _run(body: Mapping[str, Any]) -> dict[str, Any]:
        """The analysis of ``body``; with ``"first": {"cells": N}`` also the matrix the page draws
        first (the first view's last layer, head 0), so that picture needs no second request."""
        first = body.get("first")
        if first is not None and not isinstance(first, Mapping):
            raise RequestError(f"first must be an object like {{\"cells\": 512}}; got {type(first).__name__}")
        cells = _int(first.get("cells", MAX_CELLS), "first.cells", 1, MAX_CELLS) if first is not None else 0
        analysis = ex.run(body)
        out = analysis.describe()
        if first is not None:
            name, view = next(iter(analysis.views.items()))
            out["first_matrix"] = _matrix_payload(name, view, view.layers - 1, 0, cells)
        return out

    async def run(request: Request) -> Response:
        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(_run, body))

    def _matrix_payload(name: str, view: Any, layer: int, head: int | str, cells: int) -> dict[str, Any]:
        m, (gq, gk) = pool_blocks(view.matrix(layer, head), cells)
        return {"view": name, "layer": layer, "head": head, "shape": list(m.shape), "group": [gq, gk],
                "tokens": [len(view.rows), len(view.cols)], "dtype": "float16", "data": encode_f16(m)}

    def _matrix(params: Mapping[str, Any]) -> dict[str, Any]:
        _, view, layer, head = _find(ex, params)
        head = _head(head, view.heads)
        cells = _int(params.get("cells", MAX_CELLS), "cells", 1, MAX_CELLS)
        return _matrix_payload(params["view"], view, layer, head, cells)

    async def matrix(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(_matrix, dict(request.query_params)))

    def _overview(params: Mapping[str, Any]) -> dict[str, Any]:
        _, view, _, _ = _find(ex, {**params, "layer": 0})
        cells = _int(params.get("cells", OVERVIEW_CELLS), "cells", 1, 256)
        w = view.weights.float()  # (L, H, Tq, Tk)
        m, (gq, gk) = pool_blocks(w, cells)
        data, scales = encode_u8(m.reshape(-1, *m.shape[-2:]))
        return {"view": params["view"], "shape": list(m.shape), "group": [gq, gk], "dtype": "uint8", "data": data,
                "scales": scales}

    async def overview(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(_overview, dict(request.query_params)))

    def _select(body: Mapping[str, Any]) -> dict[str, Any]:
        _, view, layer, head = _find(ex, body)
        head = _head(head, view.heads, allow_all=False)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not tokens:
            raise RequestError(f"tokens must be a non-empty list of row indices; got {tokens!r:.60}")
        rows = [_int(t, "tokens[]", 0, len(view.rows) - 1) for t in tokens]
        return {"view": body["view"], "layer": layer, "head": head, "tokens": sorted(set(rows)),
                **token_sums(view.matrix(layer, head), sorted(set(rows)))}

    async def select(request: Request) -> Response:
        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(_select, body))

    def _action(body: Mapping[str, Any]) -> dict[str, Any]:
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise RequestError("key is missing; expected the key returned by /api/run")
        analysis = ex.store.get(key)
        params = body.get("params", {})
        if not isinstance(params, Mapping):
            raise RequestError(f"params must be an object; got {type(params).__name__}")
        return ex.mode(analysis.mode).action(analysis, str(body.get("action")), params)

    async def action(request: Request) -> Response:
        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(_action, body))

    async def refused(request: Request, exc: Exception) -> Response:
        if isinstance(exc, RequestError):
            return _error(str(exc), exc.status)
        return _error(str(exc), 422)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(str(exc.detail), exc.status_code)

    async def crashed(request: Request, exc: Exception) -> Response:
        return _error(f"internal error: {type(exc).__name__}: {exc}", 500)

    routes = [
        Route("/", index), Route("/favicon.ico", no_icon), Route("/api/modes", modes),
        Route("/api/run", run, methods=["POST"]), Route("/api/matrix", matrix), Route("/api/overview", overview),
        Route("/api/select", select, methods=["POST"]), Route("/api/action", action, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={AttnKitError: refused, HTTPException: http_error,
                                                       Exception: crashed})
    app.state.explorer = ex
    return app
