"""The shared server's rules without a browser: the access file, owners (row 26), quotas (row 27), a queue that holds
no processes (row 28), the public page's model and limits, dataset deletion, the decode cache's cap, and the bounded
worker for model work inside the server."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from classifier import rundir
from classifier.access import (
    LOCAL_USER,
    AccessError,
    Quotas,
    User,
    read_access,
)
from classifier.cli import main
from classifier.errors import DatasetError
from classifier.jobs import LocalProcessExecutor, launcher
from classifier.jobs.guard import GuardedExecutor
from classifier.store import RunStore
from classifier.training import TrainConfig
from classifier.workspace import datasets_dir, runs_dir, workspace_dir

ANA, BOB, VIC, ADMIN = "ana@example.com", "bob@example.com", "vic@example.com", "root@example.com"
ACCESS = f"""
default = "none"
[users]
"{ADMIN}" = "admin"
"{VIC}" = "viewer"
[domains]
"example.com" = "trainer"
[quotas]
runs_per_user = 2
runs_total = 3
"""


def write_access(text: str = ACCESS) -> Path:
    path = workspace_dir() / "access.toml"
    path.write_text(text, encoding="utf-8")
    return path


def add_run(src: Path, owner: str | None, status: str = "completed", run_id: str | None = None) -> str:
    """A copy of a finished run dir in the workspace with a store row owned by `owner`."""
    run_id = run_id or f"r-{(owner or 'local').split('@')[0]}-{time.time_ns() % 10**9}"
    dest = runs_dir() / run_id
    shutil.copytree(src, dest)
    config = rundir.read_config(dest)
    RunStore().create(run_id, f"{owner}'s run", {**config["train"], "backbone": config.get("backbone")}, str(dest),
                      status=status, owner=owner)  # fmt: skip
    return run_id


def test_access_file_roles_domains_default_and_clear_errors(tmp_path):
    rules = read_access(write_access())
    assert rules.role_for(ADMIN) == "admin" and rules.role_for("Vic@Example.com") == "viewer"  # case-insensitive
    assert rules.role_for(ANA) == "trainer" and rules.role_for("eve@other.org") == "none"
    assert rules.quotas.runs_per_user == 2 and rules.quotas.disk_mb_per_user == Quotas().disk_mb_per_user
    assert read_access(tmp_path / "missing.toml").role_for("x@y.z") == "viewer"  # no file: viewers, default quotas
    bad = tmp_path / "bad.toml"
    bad.write_text('[users]\n"x@y.z" = "owner"\n')
    with pytest.raises(AccessError, match=r"bad\.toml: users\.x@y\.z = 'owner' is not a role"):
        read_access(bad)
    bad.write_text("[quotas]\nruns_per_day = 3\n")
    with pytest.raises(AccessError, match="unknown quota 'runs_per_day'"):
        read_access(bad)
    bad.write_text("default = \n")
    with pytest.raises(AccessError, match="cannot read the access file .*bad.toml"):
        read_access(bad)


def test_row26_another_users_run_cannot_be_deleted_cancelled_or_published(two_runs):
    from classifier.jobs.catalogue import entries
    from classifier.public import publish, published

    write_access()
    rules = read_access()
    run_id = add_run(two_runs[0], ANA)
    files = sorted(p.name for p in (runs_dir() / run_id).iterdir())
    bob = GuardedExecutor(LocalProcessExecutor(), rules.user(BOB), rules)
    for verb in ("delete", "cancel", "resume"):
        with pytest.raises(AccessError, match=rf"only its owner \({ANA}\) or an admin may {verb} run"):
            getattr(bob, verb)(run_id)
    entry = next(e for e in entries(executor=LocalProcessExecutor()) if e.run_id == run_id)
    with pytest.raises(AccessError, match=rf"only its owner \({ANA}\) or an admin may publish"):
        publish(entry, rules.user(BOB))
    assert published() is None
    assert sorted(p.name for p in (runs_dir() / run_id).iterdir()) == files  # untouched
    assert RunStore().get(run_id)["status"] == "completed"
    # the command line refuses the same, in one line, exit 2
    assert main(["jobs", "delete", run_id, "--user", BOB]) == 2 and (runs_dir() / run_id).is_dir()
    # the owner publishes; an admin deletes anyone's
    assert publish(entry, rules.user(ANA))["id"] == run_id and published()["by"] == ANA
    GuardedExecutor(LocalProcessExecutor(), rules.user(ADMIN), rules).delete(run_id)
    assert RunStore().get(run_id) is None and published() is None  # its folder went with it


def test_viewers_see_finished_runs_of_others_but_not_their_queue_or_logs(two_runs):
    write_access()
    rules = read_access()
    done = add_run(two_runs[0], ANA)
    RunStore().create("r-ana-queued", "queued one", {}, str(runs_dir() / "r-ana-queued"), owner=ANA,
                      launch_args=["--config-json", "x", "--out", "y"])  # fmt: skip
    vic = GuardedExecutor(LocalProcessExecutor(), rules.user(VIC), rules)
    assert [j.run_id for j in vic.list()] == [done]
    with pytest.raises(AccessError, match="belongs to someone else"):
        vic.status("r-ana-queued")
    with pytest.raises(AccessError, match="may read the log of"):
        vic.logs(done)
    with pytest.raises(AccessError, match=r"your role \(viewer\) may not train"):
        vic.submit(TrainConfig(data="demo"))
    admin = GuardedExecutor(LocalProcessExecutor(), rules.user(ADMIN), rules)
    assert {j.run_id for j in admin.list()} == {done, "r-ana-queued"}


def test_row27_runs_past_a_quota_are_refused_naming_it_and_nothing_changes(tmp_path):
    from classifier.data.demo import make_demo_dataset

    write_access()
    rules = read_access()
    data = make_demo_dataset(tmp_path / "d", n_per_class=4, size=32)
    cfg = TrainConfig(data=str(data), backbone="simple_cnn", weights="none", img_size=32, epochs=1, num_workers=0)
    lock = _hold_cpu_lock()  # nothing may start training: every run stays queued
    try:
        ana = GuardedExecutor(LocalProcessExecutor(), rules.user(ANA), rules)
        first = [ana.submit(cfg), ana.submit(cfg)]
        with pytest.raises(AccessError, match=r"2 of your runs are queued or running and the limit is 2 per user"):
            ana.submit(cfg)
        bob = GuardedExecutor(LocalProcessExecutor(), rules.user(BOB), rules)
        bob.submit(cfg)
        with pytest.raises(AccessError, match=r"3 runs are queued or running on this server and the limit is 3"):
            bob.submit(cfg)
        rows = RunStore().list()
        assert len(rows) == 3 and {r["status"] for r in rows} == {"queued"}
        assert all(RunStore().get(i)["owner"] == ANA for i in first)
        assert main(["jobs", "submit", "--data", str(data), "--backbone", "simple_cnn", "--user", BOB]) == 2
        assert len(RunStore().list()) == 3
        for r in RunStore().list():
            LocalProcessExecutor().cancel(r["id"])
    finally:
        lock.close()


def test_row27_disk_quota_counts_a_users_datasets_and_runs(two_runs):
    from classifier.data.ingest import build_dataset
    from classifier.jobs.guard import disk_used

    write_access(ACCESS.replace("runs_total = 3", "runs_total = 3\ndisk_mb_per_user = 0.05"))
    rules = read_access()
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (120, 120), "red").save(buf, "BMP")  # 43 kB, under the 50 kB quota
    build_dataset("ana-data", [("red", [("a.bmp", buf.getvalue())]), ("blue", [("b.bmp", buf.getvalue())])], ANA)
    used = disk_used(ANA, LocalProcessExecutor())
    assert used > 50_000 and disk_used(BOB, LocalProcessExecutor()) == 0
    ana = GuardedExecutor(LocalProcessExecutor(), rules.user(ANA), rules)
    with pytest.raises(AccessError, match=r"disk quota reached: your datasets and runs use 0 MB.*limit is 0 MB"):
        ana.submit(TrainConfig(data="demo"))
    assert RunStore().list() == []


def _hold_cpu_lock():
    path = workspace_dir() / "locks" / "cpu.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - closed by the caller, which releases the lock
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_row28_queued_runs_hold_no_process_until_the_device_is_free(tmp_path):
    from classifier.data.demo import make_demo_dataset

    data = make_demo_dataset(tmp_path / "d", n_per_class=6, size=32)
    cfg = TrainConfig(data=str(data), backbone="simple_cnn", weights="none", img_size=32, epochs=1, batch_size=8,
                      num_workers=0, device="cpu")  # fmt: skip
    lock = _hold_cpu_lock()  # a run "trains" elsewhere: the device is busy
    ex = LocalProcessExecutor()
    ids = [ex.submit(cfg, name=f"q{i}") for i in range(8)]
    for _ in range(3):
        ex.list()  # pages poll: nothing more may start while the first one waits for the device
    started = [p for p in launcher.children() if p.poll() is None]
    rows = [RunStore().get(i) for i in ids]
    assert len(started) == 1 and [r["pid"] is not None for r in rows] == [True] + [False] * 7
    assert {r["status"] for r in rows} == {"queued"}
    assert sum(_rss_mb(p.pid) for p in started) < 1500  # one process, however many runs wait
    for run_id in ids[2:]:
        ex.cancel(run_id)  # waiting in the store: cancelled at once, no process to stop
    assert {RunStore().get(i)["status"] for i in ids[2:]} == {"cancelled"}
    lock.close()  # the device is free: the first trains, and its own process starts the second when it ends
    for run_id in ids[:2]:
        deadline = time.time() + 240
        while RunStore().get(run_id)["status"] != "completed":
            assert time.time() < deadline, RunStore().get(run_id)
            assert RunStore().get(run_id)["status"] in ("queued", "running"), RunStore().get(run_id)
            time.sleep(0.5)
    a, b = (RunStore().get(i) for i in ids[:2])
    assert b["started_at"] >= a["ended_at"]  # one at a time


def test_a_queued_run_waiting_in_the_store_survives_a_restart_and_is_started_by_the_next_look(tmp_path):
    store = RunStore()
    store.create("r-wait", "waiting", {}, str(runs_dir() / "r-wait"), launch_args=["--config-json", "missing.json",
                 "--out", str(runs_dir() / "r-wait")])  # fmt: skip
    time.sleep(0.1)
    fresh = LocalProcessExecutor()  # a restarted server
    assert fresh.status("r-wait").status == "queued"  # not "interrupted": it never had a process
    assert fresh.dispatch() == ["r-wait"] and store.get("r-wait")["pid"] is not None
    assert fresh.dispatch() == []  # never started twice


def test_publish_and_the_public_pages_limits(two_runs):
    from classifier.jobs.catalogue import entries
    from classifier.public import check_public_request, publish, published, unpublish

    write_access()
    rules = read_access()
    run_id = add_run(two_runs[1], ANA)
    entry = next(e for e in entries(executor=LocalProcessExecutor()) if e.run_id == run_id)
    with pytest.raises(AccessError, match=r"your role \(viewer\) may not train"):
        publish(entry, rules.user(VIC))
    record = publish(entry, rules.user(ANA))
    assert published() == record and record["kind"] == "run"
    with pytest.raises(AccessError, match="only its owner"):
        unpublish(rules.user(BOB))
    q = Quotas(public_images_per_request=2, public_requests_per_session=3)
    check_public_request(2, 2, q)
    with pytest.raises(AccessError, match="3 images at once; visitors may send up to 2"):
        check_public_request(0, 3, q)
    with pytest.raises(AccessError, match="made 3 predictions, the most a visitor may make"):
        check_public_request(3, 1, q)
    unpublish(rules.user(ADMIN))
    assert published() is None


def test_datasets_are_deleted_by_their_owner_or_an_admin_only_and_only_inside_the_workspace(tmp_path):
    from classifier.data.demo import make_demo_dataset
    from classifier.data.ingest import dataset_owner, delete_dataset, record_owner, visible_datasets

    write_access()
    rules = read_access()
    mine = make_demo_dataset(datasets_dir() / "anas", n_per_class=2, size=16)
    record_owner(mine, ANA)
    assert dataset_owner(mine) == ANA and visible_datasets(rules.user(BOB)) == []
    assert visible_datasets(rules.user(ANA)) == [mine] and visible_datasets(rules.user(ADMIN)) == [mine]
    with pytest.raises(AccessError, match=rf"only its owner \({ANA}\) or an admin may delete dataset anas"):
        delete_dataset(mine, rules.user(BOB))
    outside = make_demo_dataset(tmp_path / "server-folder", n_per_class=2, size=16)
    with pytest.raises(DatasetError, match="only datasets in the workspace can be deleted"):
        delete_dataset(outside, LOCAL_USER)
    link = datasets_dir() / "link"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(DatasetError, match="only datasets in the workspace"):
        delete_dataset(link, LOCAL_USER)
    assert outside.is_dir() and any(outside.iterdir())
    delete_dataset(mine, rules.user(ANA))
    assert not mine.exists() and dataset_owner(mine) is None and not list((workspace_dir() / "trash").iterdir())


def test_decode_cache_is_capped_least_recently_used_first(tmp_path, monkeypatch):
    from classifier.data import cache as C
    from classifier.data.demo import make_demo_dataset
    from classifier.workspace import cache_dir

    a = make_demo_dataset(tmp_path / "a", n_per_class=3, size=40)
    b = make_demo_dataset(tmp_path / "b", n_per_class=3, size=40)
    paths = lambda d: sorted(d.rglob("*.png"))  # noqa: E731
    one = 15 * 3 * 32 * 32  # bytes of one dataset's cache at side 32
    monkeypatch.setenv(C.MAX_ENV, str(1.5 * one / 2**20))  # room for one and a half
    first = C.open_cache(paths(a), key=str(a), side=32)
    assert first.file.exists()
    time.sleep(0.05)
    second = C.open_cache(paths(b), key=str(b), side=32)
    assert second.file.exists() and not first.file.exists()  # the older one went
    assert not first.file.with_suffix(".json").exists()
    assert second.array.shape == (15, 3, 32, 32)
    again = C.open_cache(paths(a), key=str(a), side=32)  # decoded again; now b is the least recently used
    assert again.decoded == 15 and not second.file.exists()
    assert sum(f.stat().st_size for f in cache_dir().glob("*.u8")) <= 1.5 * one
    monkeypatch.setenv(C.MAX_ENV, "100")
    os.utime(again.file.with_suffix(".json"), (1, 1))  # long unused, but it is the one being kept
    assert C.evict(0, keep=again.file) == [] and again.file.exists()


def test_model_work_in_the_server_takes_turns_and_a_long_wait_is_a_clear_error(monkeypatch):
    from classifier import device

    monkeypatch.setitem(device._HEAVY, "slots", threading.BoundedSemaphore(1))
    order, waited = [], []
    inside = threading.Event()

    def first():
        with device.heavy_work("job A"):
            inside.set()
            order.append("A in")
            time.sleep(0.6)
            order.append("A out")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with device.heavy_work("job B", waiting=lambda: waited.append(True)):
        order.append("B in")
    t.join()
    assert order == ["A in", "A out", "B in"] and waited == [True]
    with device.heavy_work("job C"):
        with pytest.raises(device.ServerBusy, match="busy with another session's model work; job D was not started"):
            with device.heavy_work("job D", wait_s=0.2):
                pass


def test_cli_access_show_role_publish(two_runs, capsys):
    write_access()
    run_id = add_run(two_runs[0], ANA)
    assert main(["access", "role", "zed@example.com"]) == 0
    assert json.loads(capsys.readouterr().out) == {"email": "zed@example.com", "role": "trainer"}
    assert main(["access", "publish", run_id, "--user", BOB]) == 2
    assert "only its owner (ana@example.com)" in capsys.readouterr().err
    assert main(["access", "publish", run_id, "--user", ANA]) == 0
    capsys.readouterr()
    assert main(["access", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["published"]["id"] == run_id and shown["quotas"]["runs_per_user"] == 2
    assert shown["usage"][ANA]["disk_mb"] > 0 and shown["users"] == {ADMIN: "admin", VIC: "viewer"}


def test_roles_nest():
    assert User("a", "trainer").can("train") and not User("a", "viewer").can("train")
    assert User("a", "viewer").can("predict") and not User("a", "trainer").can("access_list")
    assert LOCAL_USER.is_admin and not User("", "visitor").can("predict")


def test_ensembles_and_searches_record_their_owner_and_only_they_or_an_admin_delete_or_cancel(two_runs):
    from classifier import search
    from classifier.ensemble import build_ensemble, delete_ensemble
    from classifier.jobs.catalogue import entries

    write_access()
    ana, bob, root = User("ana@example.com", "trainer"), User("bob@example.com", "trainer"), User("r@x.org", "admin")
    out = workspace_dir() / "ensembles" / "pair"
    build_ensemble(list(two_runs), out, name="pair", owner=ana.name)
    listed = {e.name: e for e in entries(kinds=("ensemble",))}
    assert listed["pair (ensemble of 2)"].owner == ana.name
    with pytest.raises(AccessError, match=r"only its owner \(ana@example\.com\) or an admin may delete ensemble pair"):
        delete_ensemble(out, bob)
    assert rundir.read_ensemble_info(out)["owner"] == ana.name  # untouched
    delete_ensemble(out, root)
    assert not out.exists()

    base = TrainConfig(data="demo", backbone="simple_cnn", weights="none", img_size=32, epochs=1)
    spec = search.create_search(base, {"lr": [0.1, 0.01]}, sampler="grid", owner=ana.name)
    assert next(e for e in entries(kinds=("search",)) if e.run_id.endswith(spec["id"])).owner == ana.name
    with pytest.raises(AccessError, match=r"only its owner \(ana@example\.com\) or an admin may cancel search"):
        search.cancel_search(spec["id"], user=bob)
    before = search.load_search(spec["id"])["status"]  # "interrupted": queued with no driver running
    assert before != "cancelled" and not search.cancel_flag(spec["id"]).exists()
    search.cancel_search(spec["id"], user=ana)
    assert search.load_search(spec["id"])["status"] == "cancelled"
