"""fog.Server: the boot services from a config, on loopback."""

import socket
import urllib.error
import urllib.request

import pytest

import fog


def config(boot_dir, listen="127.0.0.1:0"):
    return {
        "node": {"address": "127.0.0.1", "boot_dir": str(boot_dir), "data_dir": str(boot_dir)},
        "http": {"listen": listen},
    }


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_serves_scripts_and_files_then_stops(tmp_path):
    (tmp_path / "kernel").write_bytes(b"k" * 100_000)
    with fog.Server(config(tmp_path)) as server:
        assert server.running
        http = server.addrs["http"]
        assert http.startswith("127.0.0.1:") and server.addrs["tftp"] is None
        status, body = get(f"http://{http}/boot.ipxe")
        assert status == 200 and body.startswith(b"#!ipxe\n")
        assert f"chain --autofree http://{http}/boot/${{netX/mac}}".encode() in body
        status, body = get(f"http://{http}/boot/52:54:00:12:34:56")
        assert b"choose --timeout 5000 --default local" in body
        assert get(f"http://{http}/kernel") == (200, b"k" * 100_000)
        with pytest.raises(urllib.error.HTTPError) as bad:
            get(f"http://{http}/boot/not-a-mac")
        assert bad.value.code == 400
    assert not server.running
    with pytest.raises(urllib.error.URLError):
        get(f"http://{http}/boot.ipxe")


def test_toml_text_and_file(tmp_path):
    text = f'[node]\nboot_dir = "{tmp_path}"\n[http]\nlisten = "127.0.0.1:0"\n'
    server = fog.Server(text)
    assert "http          tcp 127.0.0.1:0" in server.describe()
    path = tmp_path / "fog.toml"
    path.write_text(text)
    for source in (path, str(path)):
        server = fog.Server(source)
        server.start()
        try:
            assert get(f"http://{server.addrs['http']}/boot.ipxe")[0] == 200
        finally:
            server.stop()


def test_a_taken_port_raises_naming_it(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        server = fog.Server(config(tmp_path, f"127.0.0.1:{port}"))
        with pytest.raises(fog.BadInputError, match=f"port {port} is already in use"):
            server.start()
        assert not server.running
    finally:
        taken.close()


def test_bad_keys_and_values_name_them(tmp_path):
    with pytest.raises(fog.BadInputError, match="unknown field `adress`"):
        fog.Server({"node": {"adress": "10.0.0.1"}})
    with pytest.raises(fog.BadInputError, match=r"\[http\] listen"):
        fog.Server({"http": {"listen": "nowhere"}})
    with pytest.raises(fog.BadInputError, match=r"line 2: unknown field `lisen`"):
        fog.Server("[http]\nlisen = 1\n")
    with pytest.raises(fog.BadInputError, match=r"\[dhcp\] mode"):
        fog.Server({"node": {"address": "10.0.0.1"}, "dhcp": {"mode": "ful"}})
