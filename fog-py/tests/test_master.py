"""fog.Master against a master started in this process (fog.start_master), on loopback; an agent
run from Python (fog.run_agent) deploys an image while the task is watched."""

import threading
import time

import pytest

import fog
from conftest import debugfs_cat

MAC = "52:54:00:aa:00:01"


@pytest.fixture
def master(tmp_path):
    running = fog.start_master(data_dir=tmp_path / "master")
    yield running
    running.stop()


@pytest.fixture
def api(master) -> fog.Master:
    return fog.Master(master.url, master.admin_token)


def test_inventory_round_trips(master, api):
    assert master.url.startswith("http://127.0.0.1:") and master.running
    assert api.health()["ok"] is True

    made = api.create_node("site-a", "http://10.99.0.1:8080", subnets=["10.99.0.0/24"], max_clients=3)
    assert made["node"]["name"] == "site-a" and made["token"].startswith("fog_")
    assert [n["name"] for n in api.nodes()] == ["site-a"]
    assert api.nodes()[0]["subnets"] == ["10.99.0.0/24"]
    api.create_node("site-b", "http://10.98.0.1:8080")

    api.create_group("lab", description="room 12")
    assert api.groups() == [{"name": "lab", "description": "room 12"}]

    image = api.create_image("golden", placement=["site-b"], os="debian-13")
    assert image["placement"] == {"kind": "nodes", "nodes": ["site-b"]}
    with_copies = api.image("golden")
    assert with_copies["name"] == "golden" and [c["node"] for c in with_copies["copies"]] == ["site-b"]
    assert with_copies["copies"][0]["state"] == "pending"
    api.set_placement("golden", "all")
    assert sorted(c["node"] for c in api.copies("golden")) == ["site-a", "site-b"]
    assert [i["name"] for i in api.images()] == ["golden"]

    host = api.create_host("pc-01", ["52-54-00-AA-00-01"], image="golden", group="lab", address="10.99.0.50")
    assert host["macs"] == [MAC] and host["image"] == "golden"
    host["kernel_args"] = "quiet"
    assert api.update_host(host)["kernel_args"] == "quiet"
    assert api.host("pc-01")["kernel_args"] == "quiet"
    assert [h["name"] for h in api.hosts()] == ["pc-01"]

    # Unknown keys and bad values are refused before anything is sent, naming them.
    with pytest.raises(fog.BadInputError, match="colour"):
        api.create_host("pc-02", ["52:54:00:aa:00:02"], colour="red")
    with pytest.raises(fog.BadInputError, match="10.0.0.0/33"):
        api.create_node("site-c", "http://x:8080", subnets=["10.0.0.0/33"])
    with pytest.raises(fog.BadInputError, match="placement"):
        api.create_image("other", placement="some")

    # The master's own refusals carry its code.
    with pytest.raises(fog.ApiError) as refused:
        api.create_host("pc-03", [MAC])
    assert refused.value.code == "conflict" and refused.value.status == 409
    assert MAC in refused.value.message
    with pytest.raises(fog.ApiError) as missing:
        api.host("nobody")
    assert (missing.value.code, missing.value.status) == ("not_found", 404)
    assert "nobody" in str(missing.value)

    api.delete_host("pc-01")
    api.delete_group("lab")
    api.delete_image("golden")
    api.delete_node("site-b")
    assert api.hosts() == [] and api.groups() == [] and api.images() == []
    assert [n["name"] for n in api.nodes()] == ["site-a"]


def test_a_wrong_token_is_unauthorized(master):
    for token in ("fog_wrong", None):
        with pytest.raises(fog.ApiError) as e:
            fog.Master(master.url, token).hosts()
        assert e.value.code == "unauthorized" and e.value.status == 401
    assert isinstance(e.value, fog.FogError)


def test_a_tls_master_is_trusted_by_its_pin_or_its_certificate(tmp_path):
    with fog.start_master(data_dir=tmp_path / "m", tls_self_signed=True) as running:
        assert running.url.startswith("https://127.0.0.1:") and len(running.fingerprint) == 95
        assert running.client().health()["ok"] is True
        by_ca = fog.Master(running.url, running.admin_token, ca=str(tmp_path / "m" / "tls-cert.pem"))
        assert by_ca.hosts() == []
        wrong = running.fingerprint.replace(running.fingerprint[0], "0" if running.fingerprint[0] != "0" else "1")
        with pytest.raises(fog.BadInputError, match="not the pinned"):
            fog.Master(running.url, running.admin_token, fingerprint=wrong).hosts()
        with pytest.raises(fog.BadInputError, match="not both"):
            fog.Master(running.url, ca="x.pem", fingerprint=running.fingerprint)


def test_tokens_are_named_revoked_and_audited(master, api):
    issued = api.create_token("script")
    assert issued["name"] == "script" and issued["token"].startswith("fog_")
    assert [t["name"] for t in api.tokens()] == ["admin", "script"]
    scripted = fog.Master(master.url, issued["token"])
    scripted.create_group("lab")
    api.revoke_token("script")
    with pytest.raises(fog.ApiError) as e:
        scripted.groups()
    assert e.value.status == 401
    entries = api.audit(limit=10)
    assert ("token:script", "POST /api/v1/groups", "lab", 200) in [
        (x["actor"], x["action"], x["target"], x["status"]) for x in entries
    ]
    assert [x["status"] for x in api.audit(failed=True)] == [401]


def test_users_and_role_tokens(master, api):
    assert [(u["name"], u["role"]) for u in api.users()] == [("admin", "admin")]
    api.create_user("vera", "viewer", "viewer-password-1")
    with pytest.raises(fog.BadInputError, match="role"):
        api.create_user("otto", "chief", "operator-password-1")
    viewer = fog.Master(master.url, api.create_token("look", role="viewer")["token"])
    assert viewer.hosts() == []
    with pytest.raises(fog.ApiError) as e:
        viewer.create_group("lab")
    assert e.value.status == 403
    assert api.update_user("vera", role="operator")["role"] == "operator"
    api.remove_user("vera")
    assert [u["name"] for u in api.users()] == ["admin"]
    with pytest.raises(fog.ApiError) as e:
        api.remove_user("admin")
    assert e.value.status == 409


def test_tasks_filters_cancel_history_and_watch(api):
    api.create_node("site-a", "http://127.0.0.1:8080")
    api.create_group("lab")
    for i in range(3):
        api.create_host(f"pc-{i}", [f"52:54:00:aa:01:0{i}"], node="site-a", group="lab")
    api.create_image("golden")

    deploy = api.deploy("pc-0", "golden", after="poweroff")
    assert (deploy["kind"], deploy["state"], deploy["after"], deploy["node"]) == (
        "deploy",
        "queued",
        "poweroff",
        "site-a",
    )
    capture = api.capture("pc-1", "golden")
    assert capture["kind"] == "capture" and capture["image"] == "golden"
    wipe = api.wipe("pc-2", full=True)
    assert wipe["kind"] == "wipe_full"
    assert [t["id"] for t in api.tasks(host="pc-1")] == [capture["id"]]
    assert len(api.tasks(state="queued", node="site-a", open_only=True)) == 3
    assert len(api.tasks(limit=1)) == 1
    with pytest.raises(fog.ApiError) as bad:
        api.tasks(state="sleeping")
    assert bad.value.code == "invalid" and "sleeping" in bad.value.message

    with pytest.raises(fog.ApiError) as busy:
        api.inventory("pc-0")
    assert busy.value.code == "conflict"

    # A queued task does not change: watch yields it once, then times out.
    seen = []
    with pytest.raises(TimeoutError, match=f"task {deploy['id']} is still queued"):
        for t in api.watch(deploy["id"], timeout=0.6, interval=0.05):
            seen.append(t["state"])
    assert seen == ["queued"]

    # Cancelled from another thread: the watch ends with the cancelled task.
    threading.Timer(0.3, lambda: api.cancel(deploy["id"])).start()
    states = [t["state"] for t in api.watch(deploy["id"], timeout=20, interval=0.05)]
    assert states == ["queued", "cancelled"]
    assert [e["to"] for e in api.history(deploy["id"])] == ["queued", "cancelled"]
    with pytest.raises(fog.ApiError) as again:
        api.cancel(deploy["id"])
    assert again.value.code == "illegal_transition"

    group = api.inventory(group="lab")
    assert sorted(t["host"] for t in group["created"]) == ["pc-0"]
    assert sorted(s["host"] for s in group["skipped"]) == ["pc-1", "pc-2"]

    woken = api.wake("pc-1")
    assert (woken["host"], woken["node"], woken["macs"]) == ("pc-1", "site-a", ["52:54:00:aa:01:01"])


def test_an_agent_run_from_python_deploys_while_the_task_is_watched(tmp_path, disk, payload):
    store = fog.Store(tmp_path / "store")
    store.capture(disk, "golden")
    with fog.start_master(data_dir=tmp_path / "master", store=store) as running:
        api = running.client()
        node = api.create_node("site", "http://127.0.0.1:9", max_clients=1)
        api.create_image("golden")
        api.create_host("pc-01", [MAC], image="golden", node="site")
        task = api.deploy("pc-01", after="stay")
        sys_root = tmp_path / "sys"
        (sys_root / "class/dmi/id").mkdir(parents=True)
        (sys_root / "class/dmi/id/sys_vendor").write_text("QEMU\n")
        target = tmp_path / "target.img"
        result = {}

        def agent():
            try:
                result["report"] = fog.run_agent(
                    running.url, node["token"], disk=target, macs=[MAC], sys_root=sys_root, threads=2
                )
            except Exception as e:  # reported by the assertion below
                result["error"] = e

        thread = threading.Thread(target=agent)
        thread.start()
        states = [t["state"] for t in api.watch(task["id"], timeout=120, interval=0.05)]
        thread.join(60)
        assert "error" not in result, result.get("error")
        report = result["report"]
        assert report["ok"] and report["task"]["id"] == task["id"] and report["after"] == "stay"
        assert states[-1] == "complete" and "queued" in states, states
        assert debugfs_cat(target, "/file") == payload
        assert api.task(task["id"])["state"] == "complete"
        # Nothing more to do: once=True returns without a task.
        idle = fog.run_agent(running.url, node["token"], disk=target, macs=[MAC], sys_root=sys_root)
        assert idle["task"] is None and idle["ok"]
    assert not running.running


def test_start_master_needs_a_database_and_a_free_port(tmp_path):
    with pytest.raises(fog.BadInputError, match="db_url or data_dir"):
        fog.start_master()
    with pytest.raises(fog.BadInputError, match="listen"):
        fog.start_master(data_dir=tmp_path, listen="localhost")
    first = fog.start_master(db_url=f"sqlite://{tmp_path / 'a.db'}?mode=rwc")
    try:
        port = first.url.rsplit(":", 1)[1]
        with pytest.raises(fog.BadInputError, match=f"port {port}"):
            fog.start_master(data_dir=tmp_path, listen=f"127.0.0.1:{port}")
    finally:
        first.stop()


def test_serve_starts_a_node_that_heartbeats_to_the_master(tmp_path, master, api):
    token = api.create_node("site-a", "http://127.0.0.1:8080")["token"]
    (tmp_path / "boot").mkdir()
    config = (
        f'[node]\naddress = "127.0.0.1"\ndata_dir = "{tmp_path}"\nmaster = "{master.url}"\n'
        f'name = "site-a"\ntoken = "{token}"\nheartbeat_secs = 1\n[http]\nlisten = "127.0.0.1:0"\n'
    )
    node = fog.serve(config)
    try:
        assert node.running
        deadline = time.time() + 20
        while api.nodes()[0]["last_seen"] is None:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.1)
    finally:
        node.stop()
    assert not node.running


def test_deploy_layouts_from_the_task_else_the_host(api):
    api.create_node("site-a", "http://10.99.0.1:8080", subnets=["10.99.0.0/24"])
    api.create_image("golden")
    api.create_group("lab")
    host = api.create_host("pc-01", [MAC], image="golden", group="lab", node="site-a")
    assert host["layout"] == "fit", "the default"
    host["layout"] = "exact"
    assert api.update_host(host)["layout"] == "exact"
    assert api.create_host("pc-02", ["52:54:00:aa:00:02"], group="lab", image="golden", layout="exact")["layout"] == "exact"

    task = api.deploy("pc-01")
    assert task["layout"] == "exact", "the host's"
    api.cancel(task["id"])
    task = api.create_task("deploy", "pc-01", layout="fit")
    assert task["layout"] == "fit" and api.task(task["id"])["layout"] == "fit", "the task's own"
    api.cancel(task["id"])
    made = api.deploy(group="lab")
    assert sorted((t["host"], t["layout"]) for t in made["created"]) == [("pc-01", "exact"), ("pc-02", "exact")]
    for t in made["created"]:
        api.cancel(t["id"])
    assert api.inventory("pc-01")["layout"] is None, "only deploys carry one"

    with pytest.raises(fog.BadInputError, match="fit, exact"):
        api.deploy("pc-01", layout="sideways")
    with pytest.raises(fog.BadInputError, match="layout"):
        api.create_host("pc-03", ["52:54:00:aa:00:03"], layout="sideways")
    with pytest.raises(fog.ApiError) as refused:
        api.create_task("wipe_fast", "pc-02", layout="exact")
    assert (refused.value.code, refused.value.status) == ("unprocessable", 422)
    assert "layout" in refused.value.message
