"""The shared trainer: budgets, early stops, the log, checkpoints that resume to the same weights."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from attnkit.apps.trainer import RunFolder, TrainConfig, Trainer, load_weights, save_weights
from attnkit.errors import AttnKitError

W_TRUE = torch.tensor([[1.5, -2.0, 0.5]])


def _batches(gen: torch.Generator):
    for _ in range(8):  # a finite stream: the trainer restarts it
        x = torch.randn(16, 3, generator=gen)
        yield x, x @ W_TRUE.T


def _loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y), x.shape[0]


def _score(model):
    return {"score": -float((model.weight - W_TRUE).pow(2).sum())}


def _trainer(tmp_path, name="run", **cfg) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    config = TrainConfig(**{"max_steps": 60, "eval_every": 20, "lr": 0.05, "warmup_steps": 5, "log_every": 10,
                            "progress": False, **cfg})
    return Trainer(model, config, RunFolder.create("toy", "linear", tmp_path / name), batches=_batches,
                   loss_fn=_loss, evaluate=_score)


def test_fit_learns_and_writes_the_run_folder(tmp_path):
    tr = _trainer(tmp_path)
    res = tr.fit()
    assert res.steps == 60 and res.stopped == "max_steps"
    scores = [e["score"] for e in res.evals]
    assert scores == sorted(scores) and res.best > -0.05 and res.best_step == 60  # nears the true weights
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "eval"] == [20, 40, 60]
    assert [x["step"] for x in lines if x["event"] == "train"] == [10, 20, 30, 40, 50, 60]
    assert lines[-1] == {"event": "stop", "step": 60, "seconds": lines[-1]["seconds"], "reason": "max_steps"}
    weights = load_weights(tmp_path / "run" / "model.safetensors")
    torch.testing.assert_close(weights["weight"], tr.model.weight.detach())
    assert res.first_reaching(res.best, "score")["step"] == 60


def test_target_patience_and_budgets_stop_early(tmp_path):
    assert _trainer(tmp_path, "t", target=-10.0).fit().stopped == "target"
    flat = _trainer(tmp_path, "p", patience=1, eval_every=5)
    flat.evaluate = lambda model: {"score": 0.0}
    res = flat.fit()
    assert res.stopped == "patience" and res.steps == 10  # the second evaluation did not improve
    res = _trainer(tmp_path, "b", budget_seconds=1e-9).fit()
    assert res.stopped == "budget" and res.steps == 1 and len(res.evals) == 1  # evaluated at the end


def test_resume_gives_the_same_weights_as_one_run(tmp_path):
    whole = _trainer(tmp_path, "whole")
    whole.fit()
    first = _trainer(tmp_path, "split", max_steps=40)
    first.fit()
    second = _trainer(tmp_path, "split", max_steps=60)
    assert second.resume() and second.step == 40
    second.fit()
    torch.testing.assert_close(second.model.weight, whole.model.weight, rtol=0, atol=0)
    assert [e["step"] for e in second.evals] == [20, 40, 60]


def test_resume_without_checkpoint_is_false(tmp_path):
    assert _trainer(tmp_path).resume() is False


def test_non_finite_loss_is_an_error(tmp_path):
    tr = _trainer(tmp_path)
    tr.loss_fn = lambda model, batch: (model(batch[0]).sum() * float("nan"), 1)
    with pytest.raises(AttnKitError, match="training loss is nan at step 0"):
        tr.fit()


def _lrs(tr: Trainer, steps) -> list[float]:
    out = []
    for s in steps:
        tr.step = s
        out.append(tr._lr())
    return out


def test_schedules_warm_up_then_decay_to_the_floor(tmp_path):
    const = _trainer(tmp_path, "c")
    assert _lrs(const, [0, 4, 30, 59]) == pytest.approx([0.01, 0.05, 0.05, 0.05])
    cos = _trainer(tmp_path, "cos", schedule="cosine", min_lr_ratio=0.1, max_steps=100)
    lr = _lrs(cos, [0, 50, 100])
    assert lr[0] == pytest.approx(0.05 / 5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0.0))))  # warm-up times the curve
    assert lr[1] == pytest.approx(0.05 * 0.55) and lr[2] == pytest.approx(0.005)  # half way; the floor
    lin = _trainer(tmp_path, "lin", schedule="linear", max_steps=100)
    assert _lrs(lin, [25, 75, 100]) == pytest.approx([0.0375, 0.0125, 0.0])
    res = _trainer(tmp_path, "fit", schedule="cosine").fit()  # the logged learning rates fall after warm-up
    logged = [x["lr"] for x in (json.loads(line) for line in (tmp_path / "fit" / "metrics.jsonl").read_text()
                                .splitlines()) if x["event"] == "train"]
    scores = [e["score"] for e in res.evals]
    assert logged == sorted(logged, reverse=True) and logged[-1] < 0.01 and scores == sorted(scores)


def test_a_wall_clock_budget_drives_the_schedule(tmp_path):
    tr = _trainer(tmp_path, schedule="linear", max_steps=1000, budget_seconds=10.0)
    tr.step, tr.seconds = 10, 5.0  # half the wall-clock budget is spent, 1% of the steps
    assert tr.progress() == pytest.approx(0.5) and tr._lr() == pytest.approx(0.025)
    tr.seconds = 20.0
    assert tr.progress() == 1.0


@pytest.mark.parametrize("field,value", [("max_steps", 0), ("eval_every", -1), ("budget_seconds", 0.0), ("lr", 0.0),
                                         ("patience", 0), ("schedule", "step"), ("min_lr_ratio", 1.5)])
def test_config_refuses_bad_values(field, value):
    with pytest.raises(AttnKitError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_weights_roundtrip_and_missing_file(tmp_path):
    t = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(2, dtype=torch.long)}
    save_weights(tmp_path / "w.safetensors", t)
    back = load_weights(tmp_path / "w.safetensors")
    assert back.keys() == t.keys() and all(torch.equal(back[k], t[k]) for k in t)
    with pytest.raises(AttnKitError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")


def test_run_folder_open_refuses_non_runs(tmp_path):
    with pytest.raises(AttnKitError, match="is not a folder"):
        RunFolder.open(tmp_path / "missing")
    with pytest.raises(AttnKitError, match="has no config.json"):
        RunFolder.open(tmp_path)


def test_overridden_keeps_what_the_user_did_not_give():
    base = TrainConfig(max_steps=100, budget_seconds=60.0, eval_every=10, lr=0.1)
    assert base.overridden() == base
    cfg = base.overridden(budget_minutes=0.5, eval_every=5, seed=3, metric="accuracy")
    assert (cfg.budget_seconds, cfg.eval_every, cfg.max_steps, cfg.seed, cfg.metric) == (30.0, 5, 100, 3, "accuracy")
    with pytest.raises(AttnKitError, match="TrainConfig.max_steps"):
        base.overridden(max_steps=0)


def test_refuse_existing_run_folder(tmp_path):
    RunFolder.refuse_existing(None, False)
    RunFolder.refuse_existing(tmp_path, False)  # an empty folder is fine
    (tmp_path / "config.json").write_text("{}")
    RunFolder.refuse_existing(tmp_path, True)  # resuming it is fine
    with pytest.raises(AttnKitError, match="already holds a run"):
        RunFolder.refuse_existing(tmp_path, False)
