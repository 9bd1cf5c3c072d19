"""``attnkit serve``: the attention explorer, a local web page (Starlette on uvicorn).

Bound to 127.0.0.1 unless ``--host`` says otherwise (with a warning: the explorer has no
authentication). ``--run translation=PATH`` (repeatable, one per application) adds the modes of
trained application runs; modes whose application is not given stay hidden.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys
import threading
from pathlib import Path

from ._args import UsageError, int_range, shown

DEFAULT_PORT = 8765
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the attention explorer: an interactive page on this machine")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; others warn)")
    p.add_argument("--port", type=int_range(1, 65535), default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--run", action="append", default=[], metavar="APP=PATH", type=_app_run,
                   help="an application run folder to explore, e.g. translation=runs/translation-x (repeatable)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=run)


def _app_run(text: str) -> tuple[str, Path]:
    app, sep, path = text.partition("=")
    if not sep or not app.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"{shown(text)}; expected APP=PATH, e.g. translation=runs/my-run")
    return app.strip(), Path(path.strip())


def check_runs(pairs: list[tuple[str, Path]]) -> dict[str, Path]:
    """``--run`` values as ``{app: path}``: each path an existing folder, each app given once."""
    runs: dict[str, Path] = {}
    for app, path in pairs:
        if app in runs:
            raise UsageError(f"--run {app}= is given twice; expected one run per application")
        if not path.is_dir():
            raise UsageError(f"--run {app}={shown(path)}: the folder does not exist; expected a run folder "
                             f"written by 'attnkit train {app}'")
        runs[app] = path
    return runs


def check_address(host: str, port: int) -> None:
    """A :class:`UsageError` if ``host:port`` cannot be bound (port in use, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {shown(host)} cannot be resolved ({exc.strerror}); expected an address of this "
                         "machine such as 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"--port {port} is in use on {host}; expected a free port (try --port "
                                 f"{port + 1})") from None
            raise UsageError(f"--host {shown(host)} --port {port} cannot be used ({exc.strerror}); expected an "
                             "address of this machine and a port you may open") from None


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    runs = check_runs(args.run)
    check_address(args.host, args.port)
    from ..explorer import Explorer, create_app  # needs the serve extra (starlette, uvicorn)

    explorer = Explorer(runs)  # loads and checks each run folder
    import uvicorn

    if not is_loopback(args.host):
        print(f"warning: --host {args.host} makes the explorer reachable from other machines; it has no "
              "authentication. Use 127.0.0.1 unless you mean it.", file=sys.stderr)
    print("loading the models ...", file=sys.stderr)
    explorer.warm()
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown_host}:{args.port}/"
    print(f"attnkit explorer on {url} (modes: {', '.join(explorer.modes)}); Ctrl+C stops it", file=sys.stderr)
    if not args.no_browser:
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(create_app(explorer=explorer), host=args.host, port=args.port, log_level="warning")
    return 0
