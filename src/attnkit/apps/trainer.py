"""The training loop every application shares: seeded, with a progress bar, gradient clipping,
a wall-clock and a step budget, evaluation every N steps, early stopping, checkpoints that
resume, and a JSONL log of metrics.

A run folder holds (see :class:`RunFolder`)::

    config.json            what was built and how it was trained (written by the application)
    model.safetensors      the best weights seen at an evaluation
    last.safetensors       the latest weights, optimizer state and random state (for resume)
    trainer_state.json     step, elapsed seconds, best metric (for resume)
    metrics.jsonl          one JSON object per logged event (train loss, evaluation)
    results.json           the final tables (written by the application)

The application supplies three functions: ``batches(generator)`` yields training batches,
``loss_fn(model, batch)`` returns ``(loss, n_items)`` and ``evaluate(model)`` returns a dict of
metrics, one of which (``TrainConfig.metric``) is maximised.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import AttnKitError

__all__ = ["TrainConfig", "TrainResult", "Trainer", "RunFolder", "set_seed", "save_weights", "load_weights",
           "cache_dir", "write_json", "read_json"]


SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """How to train (all budgets are upper bounds; the first one reached stops the run)."""

    max_steps: int = 2000  # optimizer steps
    budget_seconds: float | None = None  # wall-clock budget of the training loop (None: no limit)
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up, then the schedule
    schedule: str = "constant"  # after warm-up: "constant", "cosine" or "linear" decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.0  # where a decaying schedule ends, as a fraction of lr
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    eval_every: int = 200  # steps between evaluations (also at the end)
    metric: str = "score"  # key of evaluate()'s dict that is maximised
    patience: int | None = None  # evaluations without improvement before an early stop (None: never)
    target: float | None = None  # stop once the metric reaches this value (None: never)
    seed: int = 0  # seeds torch, random and the batch generator
    log_every: int = 50  # steps between train-loss lines in metrics.jsonl
    progress: bool = True  # show a tqdm progress bar on stderr

    def __post_init__(self) -> None:
        for name in ("max_steps", "eval_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AttnKitError(f"TrainConfig.{name} must be a positive int; got {value!r}")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            raise AttnKitError(f"TrainConfig.budget_seconds must be > 0 or None; got {self.budget_seconds!r}")
        if not self.lr > 0:
            raise AttnKitError(f"TrainConfig.lr must be > 0; got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise AttnKitError(f"TrainConfig.schedule must be one of {list(SCHEDULES)}; got {self.schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise AttnKitError(f"TrainConfig.min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio!r}")
        if self.patience is not None and self.patience < 1:
            raise AttnKitError(f"TrainConfig.patience must be >= 1 or None; got {self.patience!r}")

    def overridden(self, *, budget_minutes: float | None = None, max_steps: int | None = None,
                   eval_every: int | None = None, target: float | None = None, **fields: Any) -> TrainConfig:
        """This config with the budgets a user gave (``None`` keeps this config's) and ``fields`` replaced."""
        given = {"budget_seconds": None if budget_minutes is None else budget_minutes * 60, "max_steps": max_steps,
                 "eval_every": eval_every, "target": target}
        return replace(self, **{k: v for k, v in given.items() if v is not None}, **fields)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did: steps run, seconds spent in training steps (evaluations and
    checkpoints not counted), why it stopped, the best metric, and every evaluation as
    ``{"step", "seconds", **metrics}``."""

    steps: int
    seconds: float
    stopped: str  # "max_steps" | "budget" | "target" | "patience"
    best: float | None
    best_step: int | None
    evals: list[dict[str, Any]] = field(default_factory=list)

    def first_reaching(self, threshold: float, metric: str) -> dict[str, Any] | None:
        """The first evaluation whose ``metric`` reached ``threshold`` (None if none did)."""
        return next((e for e in self.evals if e.get(metric, -math.inf) >= threshold), None)


def set_seed(seed: int) -> torch.Generator:
    """Seed ``torch`` and ``random``; return a fresh ``torch.Generator`` seeded the same way."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cache_dir(*parts: str) -> Path:
    """``$ATTNKIT_CACHE`` (default ``~/.cache/attnkit``) joined with ``parts``, created."""
    root = Path(os.environ.get("ATTNKIT_CACHE") or Path.home() / ".cache" / "attnkit")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (atomically: a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def read_json(path: str | Path) -> Any:
    """The JSON object in ``path``; an :class:`AttnKitError` naming the file if it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AttnKitError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); expected a file "
                           "written by attnkit") from None


def save_weights(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` to a safetensors file (contiguous CPU copies; shared storage is fine)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp),
              metadata=dict(metadata or {}))
    tmp.replace(path)
    return path


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise AttnKitError(f"{path} does not exist; expected a safetensors file written by a training run")
    return load_file(str(path))


class RunFolder:
    """The folder of one training run: ``runs/<task>-<model>-<UTC time>/`` unless ``out`` is given."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, task: str, model: str, out: str | Path | None = None, root: str | Path = "runs") -> RunFolder:
        """A new run folder (``out`` if given, created if missing)."""
        if out is None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            out = Path(root) / f"{task}-{model}-{stamp}"
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @staticmethod
    def refuse_existing(out: str | Path | None, resume: bool) -> None:
        """An :class:`AttnKitError` when a new run (not ``resume``) would write into ``out`` that holds one."""
        if out is not None and not resume and (Path(out) / "config.json").exists():
            raise AttnKitError(f"--out {str(out)!r} already holds a run; expected a new folder, or --resume to "
                               "continue it")

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder; an :class:`AttnKitError` if it is not one."""
        p = Path(path)
        if not p.is_dir():
            raise AttnKitError(f"run {str(path)!r} is not a folder; expected a run folder written by 'attnkit train'")
        if not (p / "config.json").is_file():
            raise AttnKitError(f"run {str(path)!r} has no config.json; "
                               "expected a run folder written by 'attnkit train'")
        if not (p / "model.safetensors").is_file():
            raise AttnKitError(f"run {str(path)!r} has no model.safetensors (training did not reach an evaluation); "
                               "expected a finished run")
        return cls(p)

    @classmethod
    def open_task(cls, path: str | Path, task: str) -> tuple[RunFolder, dict[str, Any]]:
        """An existing run folder of ``task`` and its ``config.json``; a run of another task is an error."""
        run = cls.open(path)
        config = read_json(run / "config.json")
        if config.get("task") != task:
            raise AttnKitError(f"run {str(path)!r} is a {config.get('task')!r} run; expected a {task} run")
        return run, config

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl``."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(dict(record)) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """Every line of ``metrics.jsonl``."""
        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """AdamW state as flat tensors ``opt.<param index>.<name>`` plus its JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"opt.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Trainer:
    """Trains ``model`` with AdamW under :class:`TrainConfig` and writes into ``run``.

    Args:
        model: the module; its ``state_dict`` keys are the checkpoint keys.
        config: the training configuration.
        run: the run folder.
        batches: ``batches(generator) -> iterator`` of training batches (endless or not; it is
            restarted when exhausted). The generator is the trainer's, so resumed runs continue
            the same stream of random numbers.
        loss_fn: ``loss_fn(model, batch) -> (mean loss, n_items)``; ``n_items`` (e.g. target
            tokens) is summed for the throughput.
        evaluate: ``evaluate(model) -> {metric: value}``; called in eval mode under no_grad.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, run: RunFolder, *,
                 batches: Callable[[torch.Generator], Iterator[Any]],
                 loss_fn: Callable[[nn.Module, Any], tuple[Tensor, int]],
                 evaluate: Callable[[nn.Module], Mapping[str, float]]):
        self.model, self.config, self.run = model, config, run
        self.batches, self.loss_fn, self.evaluate = batches, loss_fn, evaluate
        self.generator = set_seed(config.seed)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.seconds = 0.0
        self.items = 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.evals: list[dict[str, Any]] = []

    # -- checkpoints ---------------------------------------------------------------------------
    def save_last(self) -> None:
        """Weights, optimizer state and random state for :meth:`resume`."""
        opt_tensors, opt_meta = _optimizer_tensors(self.optimizer)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(opt_tensors)
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        save_weights(self.run / "last.safetensors", tensors)
        write_json(self.run / "trainer_state.json", {
            "step": self.step, "seconds": self.seconds, "items": self.items, "best": self.best,
            "best_step": self.best_step, "bad_evals": self.bad_evals, "evals": self.evals, "optimizer": opt_meta,
            "config": asdict(self.config)})

    def resume(self) -> bool:
        """Continue from ``last.safetensors`` if the run folder has one; True if it did."""
        path = self.run / "last.safetensors"
        if not path.exists():
            return False
        tensors = load_weights(path)
        state = read_json(self.run / "trainer_state.json")
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        _restore_optimizer(self.optimizer, tensors, state["optimizer"])
        self.generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.seconds, self.items = state["step"], state["seconds"], state["items"]
        self.best, self.best_step, self.bad_evals = state["best"], state["best_step"], state["bad_evals"]
        self.evals = state["evals"]
        return True

    # -- the loop ------------------------------------------------------------------------------
    def progress(self) -> float:
        """How much of the run is spent, in [0, 1]: the larger of the step budget's and the
        wall-clock budget's fractions, so a decaying schedule reaches its end whichever runs out first."""
        cfg = self.config
        done = self.step / cfg.max_steps
        if cfg.budget_seconds is not None:
            done = max(done, self.seconds / cfg.budget_seconds)
        return min(1.0, done)

    def _lr(self) -> float:
        cfg = self.config
        warm = min(1.0, (self.step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.schedule == "constant":
            return cfg.lr * warm
        p = self.progress()
        shape = 0.5 * (1.0 + math.cos(math.pi * p)) if cfg.schedule == "cosine" else 1.0 - p
        return cfg.lr * warm * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape)

    def _train_step(self, batch: Any) -> float:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        loss, n_items = self.loss_fn(self.model, batch)
        if not torch.isfinite(loss):
            raise AttnKitError(f"training loss is {loss.item()} at step {self.step}; expected a finite loss "
                               "(lower the learning rate or check the data)")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.items += int(n_items)
        return float(loss.item())

    def _evaluate(self) -> dict[str, Any]:
        self.model.eval()
        with torch.no_grad():
            metrics = dict(self.evaluate(self.model))
        if self.config.metric not in metrics:
            raise AttnKitError(f"evaluate() returned {sorted(metrics)}; expected the key {self.config.metric!r}")
        record = {"step": self.step, "seconds": round(self.seconds, 3), **metrics}
        self.evals.append(record)
        self.run.log({"event": "eval", **record})
        value = float(metrics[self.config.metric])
        if self.best is None or value > self.best:
            self.best, self.best_step, self.bad_evals = value, self.step, 0
            save_weights(self.run / "model.safetensors", self.model.state_dict())
        else:
            self.bad_evals += 1
        return record

    def fit_run(self, what: str, *, resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
        """:meth:`fit`, after resuming from the run folder's checkpoint when ``resume`` is asked
        (and one exists), with a line saying so and one saying what trains (``what``)."""
        if resume and self.resume():
            log(f"resumed {self.run.path} at step {self.step}")
        log(f"training {what}, run folder {self.run.path}")
        return self.fit()

    def fit_and_evaluate(self, what: str, evaluate_run: Callable[..., dict[str, Any]], *, started: float,
                         resume: bool = False, log: Callable[[str], None] = print,
                         **options: Any) -> tuple[RunFolder, dict[str, Any]]:
        """The closing lines of a task's ``train``: :meth:`fit_run`, then the task's
        ``evaluate_run(run, log=, train_result=, setup_seconds=, **options)``, where the set-up
        time is the wall-clock since ``started`` (a ``time.perf_counter()``) less the training's.
        Returns the run folder and the results."""
        result = self.fit_run(what, resume=resume, log=log)
        setup = time.perf_counter() - started - result.seconds
        return self.run, evaluate_run(self.run, log=log, train_result=result, setup_seconds=setup, **options)

    def fit(self) -> TrainResult:
        """Train until a budget, the target or the patience stops it; evaluate at the end too."""
        from tqdm.auto import tqdm

        cfg = self.config
        stream = iter(self.batches(self.generator))
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not cfg.progress, desc="train", unit="step",
                   dynamic_ncols=True, leave=False)
        stopped = "max_steps"
        last_eval_step = self.evals[-1]["step"] if self.evals else -1
        running: list[float] = []
        try:
            while self.step < cfg.max_steps:
                if cfg.budget_seconds is not None and self.seconds >= cfg.budget_seconds:
                    stopped = "budget"
                    break
                t0 = time.perf_counter()
                try:
                    batch = next(stream)
                except StopIteration:
                    stream = iter(self.batches(self.generator))
                    batch = next(stream)
                running.append(self._train_step(batch))
                self.step += 1
                self.seconds += time.perf_counter() - t0
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    loss = sum(running) / len(running)
                    running.clear()
                    self.run.log({"event": "train", "step": self.step, "seconds": round(self.seconds, 3),
                                  "loss": round(loss, 5), "lr": self._lr()})
                    bar.set_postfix(loss=f"{loss:.3f}")
                if self.step % cfg.eval_every == 0:
                    record = self._evaluate()
                    last_eval_step = self.step
                    bar.set_postfix({cfg.metric: f"{record[cfg.metric]:.3f}"})
                    self.save_last()
                    if cfg.target is not None and record[cfg.metric] >= cfg.target:
                        stopped = "target"
                        break
                    if cfg.patience is not None and self.bad_evals >= cfg.patience:
                        stopped = "patience"
                        break
        finally:
            bar.close()
        if last_eval_step != self.step:
            self._evaluate()
            self.save_last()
        self.run.log({"event": "stop", "step": self.step, "seconds": round(self.seconds, 3), "reason": stopped})
        return TrainResult(self.step, self.seconds, stopped, self.best, self.best_step, list(self.evals))
