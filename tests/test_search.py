"""Hyperparameter search: space parsing, grid = the exact product, pruning cancels a bad trial's run, ranking,
persistence and restart, cancel, the figure; and a real 3-trial search through the job system and the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from classifier import search
from classifier.cli import main
from classifier.errors import ClassifierError, RunError
from classifier.search import (
    cancel_search,
    create_search,
    grid_points,
    load_search,
    parse_space,
    ranked_trials,
    run_search,
    save_search,
    trials_figure,
    trials_table,
)
from classifier.training import TrainConfig


class FakeExecutor:
    """Trains instantly: a run reports epoch 1 at its first status call and completes at the second.

    `score(config, n)` gives the validation accuracy of the n-th submitted run (every epoch the same).
    """

    def __init__(self, score=lambda cfg, n: 0.5):
        self.score = score
        self.runs: dict[str, dict] = {}
        self.cancelled: list[str] = []

    def submit(self, config, name=None, owner=None):  # the Executor protocol's signature
        run_id = f"r{len(self.runs) + 1}"
        self.runs[run_id] = {"cfg": config, "acc": self.score(config, len(self.runs) + 1), "polls": 0,
                             "status": "queued"}  # fmt: skip
        return run_id

    def status(self, run_id):
        r = self.runs[run_id]
        if r["status"] in ("queued", "running"):
            r["polls"] += 1
            r["status"] = "running" if r["polls"] < 2 else "completed"
        done = r["status"] == "completed"
        return SimpleNamespace(status=r["status"], metrics={"accuracy": r["acc"]} if done else None, error=None)

    def history(self, run_id):
        r = self.runs[run_id]
        return [{"epoch": e, "val_acc": r["acc"], "val_loss": 1 - r["acc"]} for e in range(1, r["polls"] + 1)]

    def cancel(self, run_id):
        self.cancelled.append(run_id)
        self.runs[run_id]["status"] = "cancelled"


BASE = TrainConfig(data="demo", backbone="simple_cnn", weights="none", img_size=32, epochs=2)


def test_parse_space_forms():
    space = parse_space({"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "batch_size": {"choices": [8, "16", 8]},
                         "backbone": ["resnet18"]})  # fmt: skip
    assert space == {"lr": {"low": 1e-4, "high": 0.1, "log": True}, "batch_size": {"choices": [8, 16]},
                     "backbone": {"choices": ["resnet18"]}}  # fmt: skip
    assert parse_space('{"epochs": {"low": 1, "high": 3}}') == {"epochs": {"low": 1, "high": 3, "log": False}}


@pytest.mark.parametrize(
    "space, sampler, message",
    [
        ({"lr": {"low": 1e-4, "high": 1e-1}}, "grid", "grid search needs a list of choices for lr"),
        ({"momentum": [0.9]}, "tpe", "cannot search over 'momentum'"),
        ({"lr": {"low": 0.0, "high": 1.0, "log": True}}, "tpe", "log range needs low > 0"),
        ({"lr": {"low": 1.0, "high": 0.1}}, "random", "low < high"),
        ({"augment": ["light", "extreme"]}, "tpe", "augment must be one of"),
        ({"backbone": ["resnet_does_not_exist"]}, "tpe", "resnet_does_not_exist"),
        ({"batch_size": []}, "tpe", "empty list"),
    ],
)
def test_bad_spaces_name_the_parameter(space, sampler, message):
    with pytest.raises(ClassifierError, match=message):
        create_search(BASE, space, sampler=sampler, n_trials=2)


def test_bad_space_file_is_named(tmp_path):
    bad = tmp_path / "space.json"
    bad.write_text("{not json")
    with pytest.raises(ClassifierError, match="space.json"):
        parse_space(str(bad))


def test_grid_enumerates_exactly_the_product():
    space = {"lr": [0.1, 0.01, 0.001], "batch_size": [8, 16], "augment": ["none"]}
    spec = create_search(BASE, space, sampler="grid")
    assert spec["n_trials"] == 6
    fake = FakeExecutor()
    done = run_search(spec["id"], fake, poll=0)
    assert done["status"] == "completed"
    tried = sorted(json.dumps(t["params"], sort_keys=True) for t in done["trials"])
    product = sorted(json.dumps(p, sort_keys=True) for p in grid_points(parse_space(space, "grid")))
    assert tried == product and len(fake.runs) == 6
    # each trial's run was submitted with its parameters applied to the base config
    for t in done["trials"]:
        cfg = fake.runs[t["run_id"]]["cfg"]
        assert (cfg.lr, cfg.batch_size, cfg.backbone) == (t["params"]["lr"], t["params"]["batch_size"], "simple_cnn")
    assert create_search(BASE, space, sampler="grid", n_trials=4)["n_trials"] == 4


def test_search_ranks_trials_best_first_and_persists():
    scores = {1: 0.6, 2: 0.9, 3: 0.7}
    spec = create_search(BASE, {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}, sampler="random", n_trials=3,
                         prune=False)  # fmt: skip
    updates = []
    done = run_search(spec["id"], FakeExecutor(lambda cfg, n: scores[n]), poll=0, on_update=updates.append)
    ranked = ranked_trials(done)
    assert [t["value"] for t in ranked] == [0.9, 0.7, 0.6]
    assert [t["number"] for t in ranked] == [2, 3, 1]
    assert done["best"]["number"] == 2 and done["best"]["run_id"] == "r2"
    assert updates and updates[-1]["status"] == "completed"
    reloaded = load_search(spec["id"])
    assert reloaded["trials"] == done["trials"] and reloaded["status"] == "completed"
    assert [r["rank"] for r in trials_table(reloaded)] == [1, 2, 3]
    assert all(1e-4 <= t["params"]["lr"] <= 1e-1 for t in done["trials"])


def test_val_loss_is_minimised():
    scores = {1: 0.6, 2: 0.9, 3: 0.7}  # val_loss = 1 - accuracy
    spec = create_search(BASE, {"batch_size": [8, 16, 32]}, sampler="grid", metric="val_loss", prune=False)
    done = run_search(spec["id"], FakeExecutor(lambda cfg, n: scores[n]), poll=0)
    assert [round(t["value"], 3) for t in ranked_trials(done)] == [0.1, 0.3, 0.4]


def test_pruning_cancels_the_bad_trials_run():
    # The third run is far worse at epoch 1 than the median of the two finished ones: pruned and cancelled.
    spec = create_search(BASE, {"weight_decay": {"low": 0.0, "high": 0.1}}, sampler="random", n_trials=3)
    fake = FakeExecutor(lambda cfg, n: 0.1 if n == 3 else 0.9)
    done = run_search(spec["id"], fake, poll=0)
    states = {t["number"]: t["state"] for t in done["trials"]}
    assert states == {1: "completed", 2: "completed", 3: "pruned"}
    assert fake.cancelled == ["r3"]
    assert ranked_trials(done)[-1]["number"] == 3
    no_prune = create_search(BASE, {"weight_decay": {"low": 0.0, "high": 0.1}}, sampler="random", n_trials=3,
                             prune=False)  # fmt: skip
    fake = FakeExecutor(lambda cfg, n: 0.1 if n == 3 else 0.9)
    assert {t["state"] for t in run_search(no_prune["id"], fake, poll=0)["trials"]} == {"completed"}
    assert fake.cancelled == []


def test_restart_replays_finished_trials_and_watches_running_ones():
    space = {"lr": [0.1, 0.01], "batch_size": [8, 16]}
    spec = create_search(BASE, space, sampler="grid", prune=False)
    points = grid_points(parse_space(space, "grid"))
    fake = FakeExecutor()
    old_run = fake.submit(BASE)  # a run the earlier driver submitted; it is still going
    spec["status"] = "running"  # the earlier driver died: no lock held
    spec["trials"] = [
        {"number": 1, "params": points[0], "run_id": "gone1", "state": "completed", "value": 0.8, "intermediate": {}},
        {"number": 2, "params": points[1], "run_id": "gone2", "state": "pruned", "value": 0.2,
         "intermediate": {"1": 0.2}},
        {"number": 3, "params": points[2], "run_id": old_run, "state": "running", "value": None, "intermediate": {}},
    ]  # fmt: skip
    save_search(spec)
    assert load_search(spec["id"])["status"] == "interrupted"
    done = run_search(spec["id"], fake, poll=0)
    assert done["status"] == "completed" and len(done["trials"]) == 4
    assert len(fake.runs) == 2  # the running one was watched, only the missing grid point was submitted
    assert done["trials"][3]["params"] == points[3]
    assert done["trials"][2]["state"] == "completed"
    assert run_search(spec["id"], fake, poll=0)["status"] == "completed"  # a finished search is left alone


def test_cancel_without_a_driver_cancels_active_runs():
    spec = create_search(BASE, {"batch_size": [8, 16]}, sampler="grid")
    fake = FakeExecutor()
    run = fake.submit(BASE)
    spec["status"] = "running"
    spec["trials"] = [{"number": 1, "params": {"batch_size": 8}, "run_id": run, "state": "running", "value": None,
                       "intermediate": {}}]  # fmt: skip
    save_search(spec)
    cancel_search(spec["id"], fake)
    assert fake.cancelled == [run]
    after = load_search(spec["id"])
    assert after["status"] == "cancelled" and after["trials"][0]["state"] == "cancelled"


def test_unknown_search_and_figure():
    with pytest.raises(RunError, match="unknown search"):
        load_search("nope")
    spec = create_search(BASE, {"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "backbone": ["simple_cnn",
                                "resnet18"]}, sampler="random", n_trials=3, prune=False)  # fmt: skip
    assert len(trials_figure(spec).data) == 0  # nothing finished yet: an empty chart with a note
    done = run_search(spec["id"], FakeExecutor(lambda cfg, n: n / 10), poll=0)
    fig = trials_figure(done)
    dims = fig.data[0].dimensions
    assert [d.label for d in dims] == ["log10 lr", "backbone", "accuracy (pruned: last epoch)"]
    assert list(dims[-1].values) == [0.1, 0.2, 0.3]


@pytest.mark.slow
def test_three_trial_search_through_the_job_system_and_cli(tmp_path, capsys):
    """Three real runs (resnet18 linear probe, 32 px, 1 epoch) queued through LocalProcessExecutor."""
    from classifier.data.demo import make_demo_dataset
    from classifier.store import RunStore

    data = make_demo_dataset(tmp_path / "data", n_per_class=6, size=32, seed=4)
    code = main(["search", "--data", str(data), "--backbone", "resnet18", "--weights", "none", "--mode", "linear",
                 "--img-size", "32", "--epochs", "1", "--workers", "0", "--device", "cpu", "--sampler", "random",
                 "--trials", "3", "--search-lr", "1e-3", "1e-1", "--search-batch-size", "4", "8", "--no-prune",
                 "--name", "tiny"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["status"] == "completed" and len(result["trials"]) == 3
    values = [t["value"] for t in result["trials"]]
    assert all(v is not None for v in values) and values == sorted(values, reverse=True)
    assert result["best"]["run_id"] == result["trials"][0]["run_id"]
    store = RunStore()
    for t in result["trials"]:
        row = store.get(t["run_id"])
        assert row["status"] == "completed" and row["name"].startswith("tiny #")
        assert row["config"]["lr"] == pytest.approx(t["params"]["lr"]) and row["metrics"]["accuracy"] == t["value"]
    assert "rank" in out.err and "trial 3/3" in out.err
    assert (
        load_search(result["id"])["trials"]
        == json.loads((search.search_dir(result["id"]) / "search.json").read_text())["trials"]
    )


def test_cli_search_needs_a_space_and_data(capsys):
    assert main(["search", "--data", "demo", "--backbone", "simple_cnn"]) == 2
    assert "search space" in capsys.readouterr().err
    assert main(["search", "--search-lr", "1e-3", "1e-1", "--trials", "2"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["search", "--data", "demo", "--sampler", "grid", "--search-lr", "1e-3", "1e-1"]) == 2
    assert "grid search needs a list of choices for lr" in capsys.readouterr().err


@pytest.mark.slow
def test_background_driver_is_cancelled_with_its_running_trial(tmp_path):
    """launch_search starts `python -m classifier search --id`; cancel_search stops it and cancels the run."""
    import time

    from classifier.data.demo import make_demo_dataset
    from classifier.jobs import default_executor

    data = make_demo_dataset(tmp_path / "data", n_per_class=6, size=32, seed=5)
    base = TrainConfig(data=str(data), backbone="simple_cnn", weights="none", img_size=32, epochs=200, batch_size=4,
                       num_workers=0, device="cpu")  # fmt: skip
    spec = create_search(base, {"lr": [1e-3, 1e-2]}, sampler="grid")
    search.launch_search(spec["id"])
    deadline = time.time() + 60
    while not search.driver_alive(spec["id"]):
        assert time.time() < deadline, search.log_path(spec["id"]).read_text()
        time.sleep(0.2)
    with pytest.raises(RunError, match="already running"):
        search.launch_search(spec["id"])
    ex = default_executor()
    deadline = time.time() + 120
    while True:
        s = load_search(spec["id"])
        if s["trials"] and ex.status(s["trials"][0]["run_id"]).status == "running":
            break
        assert time.time() < deadline, s
        time.sleep(0.5)
    cancel_search(spec["id"])
    deadline = time.time() + 60
    while load_search(spec["id"])["status"] != "cancelled":
        assert time.time() < deadline, load_search(spec["id"])
        time.sleep(0.5)
    s = load_search(spec["id"])
    assert [t["state"] for t in s["trials"]] == ["cancelled"] and len(s["trials"]) == 1
    run_id = s["trials"][0]["run_id"]
    deadline = time.time() + 60
    while ex.status(run_id).status == "running":
        assert time.time() < deadline
        time.sleep(0.5)
    assert ex.status(run_id).status == "cancelled"


def test_a_deleted_run_fails_its_trial_not_the_search():
    class Forgetful(FakeExecutor):
        def status(self, run_id):
            if run_id == "r1":
                raise RunError("unknown run 'r1'")
            return super().status(run_id)

    spec = create_search(BASE, {"batch_size": [8, 16]}, sampler="grid", prune=False)
    done = run_search(spec["id"], Forgetful(), poll=0)
    assert done["status"] == "completed"
    by_run = {t["run_id"]: t for t in done["trials"]}
    assert by_run["r1"]["state"] == "failed" and "unknown run" in by_run["r1"]["error"]
    assert by_run["r2"]["state"] == "completed"


def test_figure_pins_shares_to_0_1_and_leaves_the_labels_room():
    spec = create_search(BASE, {"batch_size": [8, 16]}, sampler="grid", n_trials=2, prune=False)
    done = run_search(spec["id"], FakeExecutor(lambda cfg, n: 0.41 + n / 100), poll=0)
    fig = trials_figure(done)
    metric, line = fig.data[0].dimensions[-1], fig.data[0].line
    assert tuple(metric.range) == (0, 1) and (line.cmin, line.cmax) == (0, 1)  # 0.42 vs 0.43 is not a full spread
    # Axis labels are drawn above the axes: the plot starts well below the title's row.
    assert fig.layout.margin.t >= fig.layout.title.pad.t + 90
    loss = dict(done, metric="val_loss", direction="minimize")
    assert trials_figure(loss).data[0].dimensions[-1].range is None and trials_figure(loss).data[0].line.cmin is None
    empty = trials_figure(dict(done, trials=[]))
    assert not empty.data and empty.layout.xaxis.visible is False and empty.layout.yaxis.visible is False


def test_running_trials_show_their_live_epoch_and_accuracy():
    spec = create_search(BASE, {"batch_size": [8, 16]}, sampler="grid", n_trials=2, prune=False)
    spec["trials"] = [
        {"number": 1, "params": {"batch_size": 8}, "run_id": "r1", "state": "completed", "value": 0.8,
         "intermediate": {"1": 0.7, "2": 0.8}},
        {"number": 2, "params": {"batch_size": 16}, "run_id": "r2", "state": "running", "value": None,
         "intermediate": {"1": 0.6}},
    ]  # fmt: skip

    class Live:
        def status(self, run_id):
            assert run_id == "r2", "only active trials are read"
            return SimpleNamespace(status="running", progress={"epoch": 2, "epochs": 2, "fraction": 0.7})

        def history(self, run_id):
            return [{"epoch": 1, "val_acc": 0.6, "val_loss": 0.9}]

    live = search.live_trials(spec, Live())
    assert live == {2: {"epoch": 2, "epochs": 2, "fraction": 0.7, "val": 0.6}}
    rows = {r["trial"]: r for r in trials_table(spec, live)}
    assert rows[2]["epoch"] == "2/2" and rows[2]["latest val_acc"] == 0.6 and rows[2]["accuracy"] is None
    assert rows[1]["epoch"] == "2" and rows[1]["latest val_acc"] == 0.8 and rows[1]["accuracy"] == 0.8
    assert trials_table(spec)[1]["epoch"] == "1"  # without live progress: the epochs it reported
