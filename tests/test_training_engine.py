"""The shared training engine: callbacks, cancel tokens with owners, divergence, resumption."""
import math


import pytest
import torch

from core.training.engine import (BestCheckpoint, Callback, CsvLogger, EarlyStopping, Engine, Job, NotOwner,
                                  TimeBudget)


def _linear_problem(lr=0.1, nan_at=None):
    """Fit y = 2x: a tiny model whose loss falls; optionally a NaN loss at a given step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.linspace(-1, 1, 16)[:, None]

    def step(engine):
        loss = ((model(x) - 2 * x) ** 2).mean()
        if nan_at is not None and engine.state.step + 1 == nan_at:
            loss = loss * float("nan")
        return {"loss": loss}

    def validate(engine):
        with torch.no_grad():
            return {"val": -float(((model(x) - 2 * x) ** 2).mean())}

    return model, opt, step, validate


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_start(self, engine):
        self.events.append("start")

    def on_step(self, engine, metrics):
        self.events.append(("step", engine.state.step, round(metrics["loss"], 6)))

    def on_epoch_end(self, engine, metrics):
        self.events.append(("epoch", engine.state.epoch, metrics["improved"]))

    def on_end(self, engine):
        self.events.append("end")


def test_callbacks_are_called_in_order_and_logs_are_written(tmp_path):
    model, opt, step, validate = _linear_problem()
    rec = Recorder()
    saved = []
    log = CsvLogger(tmp_path / "steps.csv", ["epoch", "step", "loss"], tmp_path / "epochs.csv",
                    ["epoch", "last_step", "val", "seconds"])
    eng = Engine(model, opt, step, epochs=3, steps_per_epoch=4, validate_fn=validate, monitor="val",
                 callbacks=[rec, log, BestCheckpoint(lambda e, m: saved.append(e.state.epoch))])
    summary = eng.run()
    assert summary["status"] == "finished" and summary["steps"] == 12 and summary["epochs"] == 3
    assert rec.events[0] == "start" and rec.events[-1] == "end"
    kinds = [e[0] for e in rec.events[1:-1]]
    assert kinds == (["step"] * 4 + ["epoch"]) * 3
    losses = [e[2] for e in rec.events if e[0] == "step"]
    assert losses[-1] < losses[0], "the loss falls on an easy problem"
    assert saved == [1, 2, 3], "every epoch improved on this problem, so each was saved"
    assert len((tmp_path / "steps.csv").read_text().splitlines()) == 13
    assert (tmp_path / "epochs.csv").read_text().splitlines()[0] == "epoch,last_step,val,seconds"


def test_early_stopping_and_time_budget_stop_the_run():
    model, opt, step, _ = _linear_problem()
    vals = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    eng = Engine(model, opt, step, epochs=10, steps_per_epoch=2, validate_fn=lambda e: {"val": next(vals)},
                 monitor="val", callbacks=[EarlyStopping(2)])
    s = eng.run()
    assert s["epochs"] == 3 and s["stop_reason"] == "early stopping" and s["best_epoch"] == 1

    clock = {"t": 0.0}

    def tick(engine):
        clock["t"] += 1.0
        return step(engine)

    eng = Engine(model, opt, tick, epochs=1, steps_per_epoch=1000,
                 callbacks=[TimeBudget(5.0, check=lambda: clock["t"])])
    s = eng.run()
    assert s["stop_reason"] == "time budget" and 5 <= s["steps"] <= 7


def test_only_the_owner_can_cancel_a_job():
    job = Job(owner="alice", name="fine-tuning")
    with pytest.raises(NotOwner):
        job.cancel(by="bob")
    assert not job.cancel_requested
    job.cancel(by="alice")
    assert job.cancel_requested

    model, opt, step, _ = _linear_problem()
    job = Job(owner="alice")

    class CancelAtThree(Callback):
        def on_step(self, engine, metrics):
            if engine.state.step == 3:
                job.cancel(by="alice")

    s = Engine(model, opt, step, epochs=5, steps_per_epoch=10, job=job, callbacks=[CancelAtThree()]).run()
    assert s["cancelled"] and s["steps"] == 3 and job.status == "cancelled"


def test_a_diverged_run_stops_and_saves_nothing(tmp_path):
    model, opt, step, validate = _linear_problem(nan_at=7)
    saved = []
    eng = Engine(model, opt, step, epochs=5, steps_per_epoch=4, validate_fn=validate, monitor="val",
                 resume_path=tmp_path / "run.resume.pt",
                 callbacks=[BestCheckpoint(lambda e, m: saved.append(e.state.epoch))])
    s = eng.run()
    assert s["diverged"] and s["status"] == "diverged" and "loss" in s["message"]
    assert saved == [1], "only the finite epoch before the NaN was ever saved"
    resume = torch.load(tmp_path / "run.resume.pt", weights_only=True)
    assert resume["state"]["epoch"] == 1, "the resume file still holds the last finite state"
    assert all(torch.isfinite(v).all() for v in resume["model"].values())


def test_non_finite_weights_are_caught_at_the_epoch_end(tmp_path):
    model, opt, step, validate = _linear_problem()

    class Poison(Callback):
        def on_step(self, engine, metrics):
            with torch.no_grad():
                model.weight.fill_(float("inf"))

    saved = []
    s = Engine(model, opt, step, epochs=2, steps_per_epoch=1, validate_fn=validate, monitor="val",
               callbacks=[Poison(), BestCheckpoint(lambda e, m: saved.append(1))]).run()
    assert s["diverged"] and saved == []


def test_resume_continues_where_the_run_stopped(tmp_path):
    model, opt, step, validate = _linear_problem()
    rp = tmp_path / "r.resume.pt"
    job = Job()

    class CancelInEpochTwo(Callback):
        def on_step(self, engine, metrics):
            if engine.state.step == 6:
                engine.job.cancel()

    first = Engine(model, opt, step, epochs=3, steps_per_epoch=4, validate_fn=validate, monitor="val",
                   resume_path=rp, job=job, callbacks=[CancelInEpochTwo()]).run()
    assert first["cancelled"] and rp.exists()
    model2, opt2, step2, validate2 = _linear_problem()
    eng = Engine(model2, opt2, step2, epochs=3, steps_per_epoch=4, validate_fn=validate2, monitor="val",
                 resume_path=rp)
    assert eng.restore() and eng.state.epoch == 1 and eng.state.step == 4
    second = eng.run()
    assert second["epochs"] == 3 and second["steps"] == 12 and not rp.exists()
    assert math.isfinite(second["best"])


def test_fewshot_training_with_non_finite_weights_saves_no_checkpoint(tmp_path):
    from core import checkpoint
    from core.models.panet import PANetConfig, PANetPlusPlus
    from core.training.fewshot import FewShotTrainConfig, train_fewshot
    from tests.test_adapt import synthetic_set

    train, val = synthetic_set(8, 64, seed=1), synthetic_set(8, 64, seed=2)
    init = PANetPlusPlus(PANetConfig(image_size=64, weights="random")).state_dict()
    init["decoder.head.weight"] = torch.full_like(init["decoder.head.weight"], float("nan"))
    cfg = FewShotTrainConfig(image_size=64, episodes_per_epoch=3, epochs=2, val_episodes=2, weights="random",
                             save_path=str(tmp_path / "p"), device="cpu")
    s = train_fewshot(cfg, train, val, {}, progress=False, init_weights=init)
    assert s["diverged"] and s["checkpoint"] is None
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_meta(tmp_path / "p")
    assert not list(tmp_path.glob("p.safetensors")) and not list(tmp_path.glob(".p*"))
