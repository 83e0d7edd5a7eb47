"""Fixtures: real ext4 disk images built without root by mkfs.ext4 -d."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import fog

DISK_SIZE = "32M"
PAYLOAD_SIZE = 3 * 1024 * 1024


def need_tool(name: str) -> str:
    """The path of an e2fsprogs tool; the tests fail (not skip) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} not found: install e2fsprogs (apt-get install e2fsprogs)")
    return path


def make_ext4(path: Path, payload: bytes, size: str = DISK_SIZE) -> Path:
    """A whole-disk ext4 image (no partition table) whose /file holds `payload`."""
    src = path.parent / (path.name + ".src")
    src.mkdir()
    (src / "file").write_bytes(payload)
    (src / "dir").mkdir()
    (src / "dir" / "hello.txt").write_text("hello from fog\n")
    path.touch()
    subprocess.run([need_tool("mkfs.ext4"), "-q", "-F", "-d", str(src), str(path), size], check=True)
    return path


def debugfs_cat(image: Path, inner: str) -> bytes:
    out = subprocess.run(
        [need_tool("debugfs"), "-R", f"cat {inner}", str(image)],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return out.stdout


def e2fsck_ok(image: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [need_tool("e2fsck"), "-fn", str(image)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


class Recorder:
    """A progress callable that records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, phase, done, total):
        assert isinstance(phase, str) and isinstance(done, int) and isinstance(total, int)
        self.calls.append((phase, done, total))

    def phase(self, name):
        return [c for c in self.calls if c[0] == name]


@pytest.fixture(scope="session")
def payload() -> bytes:
    return os.urandom(PAYLOAD_SIZE)


@pytest.fixture(scope="session")
def disk(tmp_path_factory, payload) -> Path:
    """A 32 MiB ext4 image with /file = payload. Tests must not modify it."""
    return make_ext4(tmp_path_factory.mktemp("disk") / "disk.img", payload)


@pytest.fixture
def store(tmp_path) -> fog.Store:
    return fog.Store(tmp_path / "store")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
