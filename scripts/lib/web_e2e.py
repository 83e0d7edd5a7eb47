"""The master's web pages in a real browser: Debian's Chromium driven by Playwright.

Usage: web_e2e.py BASE_URL DATA_DIR SCREENSHOT_DIR

The master at BASE_URL is seeded through its REST API (the admin token from DATA_DIR), then a
person signs in (DATA_DIR/admin-password) and does what FOG's admins do: adds a host through the
form, searches, deploys to every host matching the search behind a confirmation, watches a
progress report (posted through the node API) move the bar on the open page, cancels a task, and
a viewer finds no action controls. A screenshot of each page goes to SCREENSHOT_DIR.
"""

import json
import pathlib
import sys
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE, DATA, SHOTS = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
SHOTS.mkdir(parents=True, exist_ok=True)
ADMIN_TOKEN = (DATA / "admin-token").read_text().strip()
ADMIN_PASSWORD = (DATA / "admin-password").read_text().strip()
VIEWER_PASSWORD = "viewer-password-1"


def api(method, path, body=None, token=ADMIN_TOKEN):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{BASE}/api/v1{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


def seed():
    node = api("POST", "/nodes", {"name": "site-a", "url": "http://127.0.0.1:1", "subnets": ["10.99.0.0/24"], "max_clients": 4})
    api("POST", "/images", {"name": "win11", "description": "Windows 11 lab", "os": "windows-11", "placement": {"kind": "all"}})
    api("POST", "/groups", {"name": "lab", "description": "Room 101"})
    for i in range(1, 25):
        api("POST", "/hosts", {"name": f"lab-{i:02}", "macs": [f"52:54:00:10:00:{i:02x}"], "group": "lab", "node": "site-a"})
    for i in range(1, 6):
        api("POST", "/hosts", {"name": f"office-{i}", "macs": [f"52:54:00:20:00:{i:02x}"], "node": "site-a"})
    api("POST", "/users", {"name": "vera", "role": "viewer", "password": VIEWER_PASSWORD})
    return node["token"]


def shot(page, name):
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot {path}")


def sign_in(page, user, password):
    page.goto(f"{BASE}/")
    expect(page).to_have_url(f"{BASE}/login?next=%2F")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")


def main():
    node_token = seed()
    with sync_playwright() as p:
        try:
            run(p, node_token)
        except Exception:
            print("--- browser console errors:", *CONSOLE_ERRORS, sep="\n")
            for i, open_page in enumerate(PAGES):
                try:
                    print(f"--- page {i} at {open_page.url}:")
                    print(open_page.inner_text("body")[:3000])
                    open_page.screenshot(path=str(SHOTS / f"failure-{i}.png"), full_page=True)
                except Exception as e:  # a closed page tells nothing more
                    print(f"(page {i}: {e})")
            raise


PAGES = []
CONSOLE_ERRORS = []


def watch_console(page):
    """Every error the page logs (a script refused by the Content-Security-Policy among them)."""
    page.on("console", lambda m: m.type == "error" and CONSOLE_ERRORS.append(f"{page.url}: {m.text}"))
    page.on("pageerror", lambda e: CONSOLE_ERRORS.append(f"{page.url}: {e}"))


def run(p, node_token):
    if True:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        PAGES.append(page)
        watch_console(page)

        print("== a wrong password is refused")
        sign_in(page, "admin", "not-the-password")
        expect(page.locator("[role=alert]")).to_contain_text("wrong user name or password")
        shot(page, "01-sign-in-refused")

        print("== signed in: the dashboard")
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.click("button:has-text('Sign in')")
        expect(page.locator("h1")).to_have_text("Dashboard")
        expect(page.locator("header .me")).to_contain_text("admin")
        shot(page, "02-dashboard")

        print("== a host added through the form")
        page.click("nav >> text=Hosts")
        page.click("text=Add a host")
        page.fill("input[name=name]", "pc-new")
        page.fill("input[name=macs]", "52-54-00-AA-00-01")
        page.select_option("select[name=image]", "win11")
        page.click("button:has-text('Add')")
        expect(page.locator("h1")).to_have_text("pc-new")
        expect(page.locator(".notice")).to_contain_text("Host pc-new added")
        assert api("GET", "/hosts/pc-new")["macs"] == ["52:54:00:aa:00:01"]
        shot(page, "03-host")

        print("== a search narrows the table; the URL carries it")
        page.goto(f"{BASE}/hosts")
        expect(page.locator("table.hosts tbody tr")).to_have_count(30)
        page.fill("#q", "lab-1")
        expect(page).to_have_url(f"{BASE}/hosts?q=lab-1")
        expect(page.locator("table.hosts tbody tr")).to_have_count(10)
        expect(page.locator("#host-total")).to_have_text("10")
        shot(page, "04-hosts-search")
        page.reload()
        expect(page.locator("table.hosts tbody tr")).to_have_count(10)

        print("== all matching, deploy, with a confirmation; the tasks appear")
        page.check("#all-matching")
        page.select_option("select[name=action]", "deploy")
        page.select_option("select[aria-label='Image for the action']", "win11")
        page.click("button:has-text('Apply')")
        expect(page.locator("#question")).to_have_text("Deploy image win11 to 10 hosts, erasing their disks?")
        assert api("GET", "/tasks")["items"] == [], "a task before the confirmation"
        shot(page, "05-confirm")
        page.click("button:has-text('Yes, do it')")
        expect(page).to_have_url(f"{BASE}/tasks")
        expect(page.locator(".notice")).to_contain_text("10 done")
        expect(page.locator("#active-rows tr[sse-swap]")).to_have_count(10)
        tasks = api("GET", "/tasks?open_only=true")["items"]
        assert len(tasks) == 10 and {t["host"] for t in tasks} == {f"lab-{i}" for i in range(10, 20)}

        print("== a progress report through the node API moves the bar, with no navigation")
        page.evaluate("window.__stayed = true")
        task = next(t for t in tasks if t["host"] == "lab-12")
        reply = api("POST", "/checkin", {"mac": "52:54:00:10:00:0c"}, token=node_token)
        assert reply["slot"] == "granted" or reply["slot"].get("state") == "granted", reply
        row = page.locator(f"#task-{task['id']}")
        expect(row.locator(".state")).to_have_text("in progress", timeout=20000)
        api("POST", f"/tasks/{task['id']}/progress", {"percent": 42.0, "bytes": 4_200_000_000, "rate": 95_000_000}, token=node_token)
        expect(row.locator(".percent")).to_have_text("42.0%", timeout=20000)
        expect(row).to_contain_text("95 MB/s")
        api("POST", f"/tasks/{task['id']}/progress", {"percent": 63.5, "bytes": 6_350_000_000, "rate": 97_000_000}, token=node_token)
        expect(row.locator(".percent")).to_have_text("63.5%", timeout=20000)
        assert page.evaluate("window.__stayed") is True, "the page was reloaded"
        shot(page, "06-tasks-live")

        print("== cancel, with a confirmation")
        other = next(t for t in tasks if t["host"] == "lab-15")
        page.locator(f"#task-{other['id']}").locator("text=Cancel").click()
        expect(page.locator("#question")).to_contain_text(f"Cancel task {other['id']}")
        page.click("button:has-text('Yes, do it')")
        expect(page.locator(".notice")).to_contain_text("cancelled")
        expect(page.locator(f"#task-{other['id']}")).to_have_count(0)
        assert api("GET", f"/tasks/{other['id']}")["state"] == "cancelled"

        print("== the other pages")
        for name, path, heading in [("07-registrations", "/registrations", "Registrations"),
                                    ("08-groups", "/groups/lab", "Group lab"), ("09-images", "/images", "Images"),
                                    ("10-nodes", "/nodes", "Nodes"), ("11-users", "/users", "Users"),
                                    ("12-audit", "/audit", "Audit log"), ("13-dashboard-busy", "/", "Dashboard")]:
            page.goto(f"{BASE}{path}")
            expect(page.locator("h1")).to_have_text(heading)
            shot(page, name)
        expect(page.locator("section", has_text="Nodes").locator("tbody tr")).to_contain_text("1 / 4")

        print("== a viewer sees no action controls")
        viewer = browser.new_page(viewport={"width": 1400, "height": 900})
        PAGES.append(viewer)
        watch_console(viewer)
        sign_in(viewer, "vera", VIEWER_PASSWORD)
        expect(viewer.locator("h1")).to_have_text("Dashboard")
        viewer.goto(f"{BASE}/hosts")
        expect(viewer.locator("table.hosts tbody tr")).to_have_count(30)
        expect(viewer.locator("input[name=host]")).to_have_count(0)
        expect(viewer.locator("button:has-text('Apply')")).to_have_count(0)
        expect(viewer.locator("text=Add a host")).to_have_count(0)
        viewer.goto(f"{BASE}/tasks")
        expect(viewer.locator("#active-rows tr[sse-swap]")).to_have_count(9)
        expect(viewer.locator("#active-rows a:has-text('Cancel')")).to_have_count(0)
        expect(viewer.locator("nav >> text=Users")).to_have_count(0)
        shot(viewer, "14-viewer-tasks")
        # The refused sign-in answers 401, which Chromium logs as a failed resource load.
        unexpected = [e for e in CONSOLE_ERRORS if "401" not in e]
        assert not unexpected, "errors in the browser console:\n" + "\n".join(unexpected)
        browser.close()
        print("== web e2e passed")


main()
