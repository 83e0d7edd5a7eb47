"""End-to-end tests of the `fog` module on real ext4 images."""

import ast
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fog
from conftest import Recorder, debugfs_cat, e2fsck_ok, make_ext4

MIB = 1024 * 1024


def test_capture_deploy_roundtrip(store, disk, payload, recorder, tmp_path):
    started = time.monotonic()
    report = store.capture(disk, "disk1", progress=recorder)
    elapsed = time.monotonic() - started

    assert report["name"] == "disk1"
    assert report["disk_size"] == 32 * MIB
    assert report["table"] == "none"
    assert report["data_bytes"] >= len(payload)
    assert report["chunks"] > 0
    assert report["new_stored_bytes"] > 0
    assert [r["partition"] for r in report["regions"]] == [None]

    calls = recorder.phase("capture")
    assert calls, recorder.calls
    assert {c[0] for c in recorder.calls} == {"capture"}
    total = calls[-1][2]
    assert total > 0
    assert calls[-1][1] == total, calls[-5:]
    dones = [c[1] for c in calls]
    assert dones == sorted(dones), "done must never go back"
    # Throttled: a start and an end call plus at most ~20 a second (with slack for timing).
    assert len(calls) <= 4 + 25 * elapsed, (len(calls), elapsed)

    images = store.images()
    assert [i["name"] for i in images] == ["disk1"]
    assert images[0]["disk_size"] == 32 * MIB
    assert images[0]["table"] == "none"
    assert images[0]["chunk_count"] == report["chunks"]

    info = store.info("disk1")
    assert info["name"] == "disk1"
    assert info["layout"]["table"] == "none"
    assert info["layout"]["disk_size"] == 32 * MIB
    assert info["layout"]["sector_size"] in (512, 4096)
    assert len(info["regions"]) == 1
    assert info["regions"][0]["filesystem"]["kind"] in ("ext", "raw")
    assert info["data_bytes"] == report["data_bytes"]

    target = tmp_path / "target.img"
    deploy_progress = Recorder()
    deployed = store.deploy("disk1", target, verify=True, progress=deploy_progress)
    assert deployed["verified"] is True
    assert deployed["data_bytes"] == report["data_bytes"]
    assert target.stat().st_size == 32 * MIB
    for phase in ("deploy", "verify"):
        calls = deploy_progress.phase(phase)
        assert calls, (phase, deploy_progress.calls)
        assert calls[-1][1] == calls[-1][2] == report["data_bytes"]

    fsck = e2fsck_ok(target)
    assert fsck.returncode == 0, fsck.stdout
    assert debugfs_cat(target, "/file") == payload
    assert debugfs_cat(target, "/dir/hello.txt") == b"hello from fog\n"

    verified = store.verify()
    assert verified["ok"] is True, verified
    assert verified["images_checked"] == 1
    assert verified["chunks_checked"] > 0
    assert verified["corrupt"] == [] and verified["image_errors"] == []


def test_deploy_over_existing_target_without_progress(store, disk, payload, tmp_path):
    store.capture(disk, "disk1")
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(MIB) * 32)  # junk the deploy must overwrite where it matters
    store.deploy("disk1", str(target))
    assert e2fsck_ok(target).returncode == 0
    assert debugfs_cat(target, "/file") == payload


def test_bad_name_raises_bad_input(store, disk):
    for call in (
        lambda: store.capture(disk, "../x"),
        lambda: store.info("../x"),
        lambda: store.remove("../x"),
        lambda: store.deploy("../x", "/nonexistent/t.img"),
    ):
        with pytest.raises(fog.BadInputError, match="invalid image name"):
            call()
    assert store.images() == []
    assert issubclass(fog.BadInputError, fog.FogError)
    assert issubclass(fog.FogError, Exception)


def test_missing_image_raises_bad_input(store, tmp_path):
    target = tmp_path / "t.img"
    with pytest.raises(fog.BadInputError, match="no image named"):
        store.deploy("missing", target)
    with pytest.raises(fog.BadInputError):
        store.info("missing")
    with pytest.raises(fog.BadInputError):
        store.remove("missing")


def test_missing_source_raises_bad_input(store, tmp_path):
    with pytest.raises(fog.BadInputError):
        store.capture(tmp_path / "nope.img", "x")


def test_foreign_directory_is_not_a_store(tmp_path):
    (tmp_path / "somefile").write_text("x")
    with pytest.raises(fog.BadInputError, match="not a fog store"):
        fog.Store(tmp_path)


def test_second_capture_dedupes(store, disk):
    first = store.capture(disk, "one")
    second = store.capture(disk, "two")
    assert first["new_stored_bytes"] > 0
    assert second["chunks"] == first["chunks"]
    assert second["new_stored_bytes"] <= first["new_stored_bytes"] * 0.02, (first, second)
    stats = store.stats()
    assert stats["images"] == 2
    assert stats["logical_bytes"] == first["data_bytes"] + second["data_bytes"]
    assert stats["ratio"] > 1.5


def test_remove_then_gc_frees_chunks(store, disk, payload, tmp_path):
    other = make_ext4(tmp_path / "other.img", os.urandom(len(payload)))
    store.capture(disk, "keep")
    store.capture(other, "drop")
    before = store.stats()

    assert store.gc()["chunks_removed"] == 0  # everything is referenced
    store.remove("drop")
    assert [i["name"] for i in store.images()] == ["keep"]
    report = store.gc()
    assert report["chunks_removed"] > 0
    assert report["bytes_freed"] >= len(payload) // 2  # the other disk's random payload went
    after = store.stats()
    assert after["chunks"] == before["chunks"] - report["chunks_removed"]
    # Store overhead (pack and index files) may move too, so no exact equality here.
    assert after["stored_bytes"] <= before["stored_bytes"] - len(payload) // 2
    assert after["images"] == 1

    # What is left still deploys byte for byte.
    assert store.verify()["ok"] is True
    target = tmp_path / "t.img"
    store.deploy("keep", target, verify=True)
    assert debugfs_cat(target, "/file") == payload


def _random_disk(path: Path, mib: int) -> Path:
    # A raw disk of random data: no filesystem, so every block is read, hashed and compressed.
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))
    return path


@pytest.mark.parametrize("with_progress", [False, True])
def test_gil_released_during_capture(store, tmp_path, with_progress):
    big = _random_disk(tmp_path / "random.img", 96)
    counter = 0
    stamps = []  # (time, counter) samples of the main thread's loop
    seen = []  # the counter as seen from the progress callable
    result = {}

    def progress(phase, done, total):
        seen.append(counter)

    def work():
        try:
            result["start"] = time.monotonic()
            result["report"] = store.capture(big, "big", progress=progress if with_progress else None)
            result["end"] = time.monotonic()
        except BaseException as e:  # pragma: no cover - reported below
            result["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    last = 0.0
    while thread.is_alive() and time.monotonic() < deadline:
        counter += 1
        now = time.monotonic()
        if now - last >= 0.001:
            stamps.append((now, counter))
            last = now
    thread.join(timeout=5)
    assert not thread.is_alive(), "capture did not finish"
    assert "error" not in result, result
    assert result["report"]["data_bytes"] == 96 * MIB

    # The main thread ran Python code in the middle of the capture, not only at its edges.
    start, end = result["start"], result["end"]
    assert end - start > 0.05, "capture too fast to tell"
    middle = [c for t, c in stamps if start + (end - start) / 4 <= t <= end - (end - start) / 4]
    assert len(middle) >= 2 and middle[-1] > middle[0], (end - start, len(stamps), len(middle))
    if with_progress:
        assert len(seen) >= 2
        assert seen[-1] > seen[0], seen


def test_progress_is_throttled(store, tmp_path):
    big = _random_disk(tmp_path / "random.img", 64)
    captured = store.capture(big, "big")
    recorder = Recorder()
    started = time.monotonic()
    report = store.deploy("big", tmp_path / "t.img", verify=True, progress=recorder)
    elapsed = time.monotonic() - started
    # fogcore reports deploy and verify progress per chunk: without throttling there would be
    # about one call per chunk and phase.
    assert report["chunks"] == captured["chunks"]
    allowed = 2 + 20 * elapsed + 2  # start and end calls, ~20 a second, slack for timing
    assert report["chunks"] > 2 * allowed, "too few chunks to tell; make the disk larger"
    for phase in ("deploy", "verify"):
        calls = recorder.phase(phase)
        assert 2 <= len(calls) <= allowed, (phase, len(calls), elapsed)
        assert calls[0][1] == 0 and calls[-1][1] == calls[-1][2] == 64 * MIB
        assert [c[1] for c in calls] == sorted(c[1] for c in calls)


def test_progress_exception_stops_deploy(store, tmp_path):
    store.capture(_random_disk(tmp_path / "random.img", 64), "big")

    class Stop(Exception):
        pass

    calls = []

    def progress(phase, done, total):
        calls.append((phase, done, total))
        raise Stop("stop here")

    target = tmp_path / "t.img"
    with pytest.raises(Stop, match="stop here"):
        store.deploy("big", target, verify=True, progress=progress)
    assert calls == [("deploy", 0, 64 * MIB)], "no call after the callable raised"
    # The deploy stopped early: most of the (sparse, fresh) target was never written.
    written = 0
    with open(target, "rb") as f:
        while block := f.read(MIB):
            written += block.count(0) < len(block) // 2
    assert written < 32, f"{written} MiB of 64 were written after the callable raised"


def test_progress_exception_in_capture_leaves_no_image(store, disk):
    def progress(phase, done, total):
        if done > 0:
            raise KeyError("enough")

    with pytest.raises(KeyError):
        store.capture(disk, "disk1", progress=progress)
    assert store.images() == []
    store.gc()
    stats = store.stats()
    assert stats["chunks"] == 0 and stats["stored_bytes"] == 0, f"gc left {stats}"


def test_path_and_repr(tmp_path):
    s = fog.Store(str(tmp_path / "s"))
    assert s.path == Path(tmp_path / "s")
    assert "fog.Store(" in repr(s)
    assert isinstance(fog.__version__, str)


def test_stubs_match_module():
    """Everything the native module exports is in its stub, and the other way round."""
    stub = Path(fog.__file__).with_name("_fog.pyi")
    tree = ast.parse(stub.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert set(classes) == {
        "FogError",
        "BadInputError",
        "ApiError",
        "Store",
        "Server",
        "Master",
        "TaskWatch",
        "RunningMaster",
    }
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert functions == {"start_master", "run_agent"}
    for cls in ("Store", "Server", "Master", "RunningMaster"):
        body = [n for n in classes[cls].body if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")]
        stub_methods = {n.name for n in body}
        runtime_methods = {n for n in dir(getattr(fog, cls)) if not n.startswith("_")}
        assert stub_methods == runtime_methods, cls
        for node in body:
            assert ast.get_docstring(node), f"{cls}.{node.name} has no docstring in the stub"
    native = __import__("fog._fog", fromlist=["*"])
    assert {n for n in dir(native) if not n.startswith("_")} == set(classes) | functions


def test_stubtest():
    """mypy's stubtest: the stubs match the runtime signatures (runs when mypy is installed)."""
    pytest.importorskip("mypy")
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fog"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert out.returncode == 0, out.stdout


def test_memory_budget_is_a_store_option_and_reports_give_the_peak(disk, payload, tmp_path):
    store = fog.Store(tmp_path / "small", memory_mib=8)
    captured = store.capture(disk, "disk1")
    assert captured["peak_memory_bytes"] > 0
    deployed = store.deploy("disk1", tmp_path / "target.img", verify=True)
    assert deployed["verified"] and deployed["peak_memory_bytes"] > 0
    assert store.verify()["peak_memory_bytes"] > 0
    with pytest.raises(fog.BadInputError, match="memory_mib"):
        fog.Store(tmp_path / "tiny", memory_mib=4)


def test_deploy_takes_a_layout_and_refuses_others(store, disk, payload, tmp_path):
    store.capture(disk, "disk1")
    for layout in ("fit", "exact"):
        target = tmp_path / f"{layout}.img"
        store.deploy("disk1", str(target), layout=layout)
        assert debugfs_cat(target, "/file") == payload
    with pytest.raises(fog.BadInputError, match="fit, exact"):
        store.deploy("disk1", str(tmp_path / "other.img"), layout="sideways")
    assert not (tmp_path / "other.img").exists(), "refused before anything is written"
