"""What every mode declares and the input checks they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..api import Analysis, RequestError

__all__ = ["Input", "Mode", "text_input"]


@dataclass(frozen=True)
class Input:
    """One field of a mode's form: ``kind`` is ``"text"``, ``"select"`` (one of ``choices``) or
    ``"int"`` (``low`` to ``high``); ``when`` shows it only while another field has one of the
    given values (``{"method": ["lsh"]}``)."""

    name: str
    label: str
    kind: str = "text"
    required: bool = False
    default: Any = None
    choices: Sequence[str] = ()
    low: int | None = None
    high: int | None = None
    when: Mapping[str, Sequence[str]] = field(default_factory=dict)
    placeholder: str = ""

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["choices"], d["when"] = list(self.choices), {k: list(v) for k, v in self.when.items()}
        return d

    def parse(self, value: Any) -> Any:
        """``value`` checked against this field; a :class:`RequestError` (422) naming it if not valid."""
        if self.kind == "text":
            if not isinstance(value, str):
                raise RequestError(f"{self.name} must be a string; got {type(value).__name__}")
            value = value.strip()
            if self.required and not value:
                raise RequestError(f"{self.name} is empty; type some text")
            return value or None
        if self.kind == "select":
            if value not in self.choices:
                raise RequestError(f"{self.name} {value!r} is not available; expected one of {', '.join(self.choices)}")
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise RequestError(f"{self.name} must be an integer; got {value!r}")
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise RequestError(f"{self.name} {value} is out of range; expected {self.low} to {self.high}")
            return value
        raise AssertionError(f"unknown input kind {self.kind!r}")


def text_input(name: str = "text", label: str = "sentence", *, required: bool = True, placeholder: str = "") -> Input:
    """A free-text field."""
    return Input(name, label, "text", required=required, default="", placeholder=placeholder)


class Mode(ABC):
    """One way of looking at attention. Subclasses set ``name``, ``title``, ``inputs`` and
    implement :meth:`analyse`; ``app`` names the ``--run APP=PATH`` the mode needs (None: none)."""

    name: ClassVar[str]
    title: ClassVar[str]
    order: ClassVar[int] = 100  # position in the page's mode list
    app: ClassVar[str | None] = None
    help: ClassVar[str] = ""
    actions: ClassVar[Sequence[str]] = ()  # extra computations the page may ask for on an analysis

    def __init__(self, run: str | Path | None = None):
        self.run = run

    @property
    def inputs(self) -> list[Input]:
        return []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "help": self.help, "app": self.app,
                "inputs": [i.describe() for i in self.inputs], "actions": list(self.actions),
                **self.extra_description()}

    def extra_description(self) -> dict[str, Any]:
        """More JSON for the page (limits, notes)."""
        return {}

    def parse(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The request's inputs, each checked; unknown fields are refused."""
        fields = {i.name: i for i in self.inputs}
        unknown = sorted(set(body) - set(fields))
        if unknown:
            raise RequestError(f"unknown input {unknown[0]!r} for mode {self.name!r}; expected {', '.join(fields)}")
        out: dict[str, Any] = {}
        for name, inp in fields.items():
            if name in body and body[name] is not None:
                out[name] = inp.parse(body[name])
            elif inp.required:
                raise RequestError(f"{name} is missing; type some text" if inp.kind == "text"
                                   else f"{name} is missing; expected a value")
            else:
                out[name] = inp.default
        return out

    def warm(self) -> None:  # noqa: B027 (optional hook: most modes load in __init__ or lazily)
        """Load what the mode needs before the first request (the server calls it at start)."""

    @abstractmethod
    def analyse(self, inputs: Mapping[str, Any], key: str) -> Analysis:
        """Compute the analysis of checked ``inputs`` (stored under ``key``)."""

    def action(self, analysis: Analysis, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Run the extra computation ``name`` on ``analysis`` (it may add views); returns JSON."""
        raise RequestError(f"mode {self.name!r} has no action {name!r}; expected one of "
                           f"{', '.join(self.actions) or '(none)'}", 404)
