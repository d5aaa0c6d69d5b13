"""The console's Quarantine, Models, Audit and Users pages in Chromium, against the web server on
a real socket over a real spool: each role sees only the pages it may; a quarantined object is
released and another deleted from the page, both then on the Audit page; a user added on the
Users page logs in, a disabled one cannot; the Audit filter narrows; Models lists the model.
Screenshots go to /tmp/console-shots/ (quarantine.png, models.png, audit.png, users.png)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from node.core import at_rest, db
from node.core.accounts import Role
from node.core.api_tokens import ApiTokens
from node.core.keys import write_key_file
from node.core.ledger import Ledger
from node.core.manifest import load_manifest
from node.core.spool import Spool, open_spool
from node.pipeline.infer.registry import LoadedModel
from node.web.context import WebContext
from node.web.server import WebServer
from tests.conftest import free_port
from tests.web.conftest import PASSWORD, web_settings
from tests.web.console.conftest import Console, log_in, shoot
from tests.web.spool_fixtures import encoded, garbage_after_meta, patient_ct

MODELS = Path(__file__).parents[3] / "models"
PAGES = {"/quarantine": {Role.ADMIN, Role.OPERATOR}, "/models": set(Role),
         "/audit": {Role.ADMIN}, "/users": {Role.ADMIN}}


@pytest.fixture
def admin_console(tmp_path: Path) -> Iterator[tuple[Console, Spool]]:
    """The web app on a free port over an empty ledger and a real spool, one user per role,
    the real lung-ct manifest loaded (its weights are not needed to list it) and brain-mask
    enabled but not loaded."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    db.create_schema(engine)
    settings = replace(web_settings(tmp_path, port=free_port()))
    write_key_file(tmp_path / "deid.key")
    manifest = load_manifest(MODELS / "lung-ct")
    loaded = {manifest.name: LoadedModel(manifest, None, "cpu", 0.0)}  # type: ignore[arg-type]
    ctx = WebContext.of(Ledger(engine), settings, loaded,
                        expected_models={manifest.name, "brain-mask"})
    for role in Role:
        ctx.accounts.add_user(role.value, role, PASSWORD)
    spool = open_spool(settings)
    spool.prepare()
    server = WebServer(ctx)
    server.start()
    try:
        yield Console(ctx, server.url), spool
    finally:
        server.stop()
        at_rest.configure(spool.keys.files, encrypt=False)
        engine.dispose()


def _quarantine(console: Console, spool: Spool, data: bytes, reason: str) -> int:
    """Quarantine ``data`` as the receive path does (file moved, row recorded); its id."""
    path = spool.incoming / f"q-{len(data)}-{id(data)}.dcm"
    path.write_bytes(data)
    ds = patient_ct()
    return console.ledger.record_quarantine(
        reason=reason, path=spool.quarantine(path), size_bytes=len(data),
        sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=None, calling_ae_title="CT_ROOM_2",
        peer_address="127.0.0.1")


@pytest.mark.parametrize("role", list(Role))
def test_each_role_sees_only_the_admin_pages_it_may(
        admin_console: tuple[Console, Spool], page: Page, role: Role) -> None:
    console, _ = admin_console
    log_in(page, console.url, role.value)
    nav = page.locator("header nav a").all_inner_texts()
    for path, roles in PAGES.items():
        label = path[1:].capitalize()
        assert (label in nav) == (role in roles), (path, nav)
        answer = page.goto(console.url + path)
        assert answer is not None
        if role in roles:
            assert answer.status == 200
            expect(page.locator("h1")).not_to_have_text("Not allowed")
        else:
            assert answer.status == 403
            expect(page.locator("h1")).to_have_text("Not allowed")


def test_release_and_delete_from_the_quarantine_page_are_audited(
        admin_console: tuple[Console, Spool], page: Page) -> None:
    console, spool = admin_console
    good = _quarantine(console, spool, encoded(patient_ct()), "internal error (OSError)")
    bad = _quarantine(console, spool, garbage_after_meta(patient_ct()), "not a DICOM data set")
    log_in(page, console.url, "operator")
    page.goto(console.url + "/quarantine")
    rows = page.locator("table.list tbody tr")
    expect(rows).to_have_count(2)
    expect(page.get_by_text("not a DICOM data set")).to_be_visible()
    assert page.get_by_role("link", name="Download").count() == 0  # admin only
    shoot(page, "quarantine")

    page.locator("tr", has_text=f"#{good}").get_by_role("button", name="Release").click()
    expect(page.locator(".message.ok")).to_contain_text(f"#{good} was released")
    expect(rows).to_have_count(1)
    assert console.ledger.quarantine_entry(good) is None

    page.locator("tr", has_text=f"#{bad}").get_by_role("link", name="Delete").click()
    expect(page.locator("h1")).to_have_text(f"Delete object #{bad}?")
    assert console.ledger.quarantine_entry(bad) is not None  # nothing gone before the 2nd step
    page.get_by_role("button", name="Delete for good").click()
    expect(page.locator(".message.ok")).to_contain_text(f"#{bad} was deleted")
    expect(page.get_by_text("Nothing is in quarantine.")).to_be_visible()
    assert console.ledger.quarantine_entry(bad) is None
    assert list(spool.quarantine_dir.iterdir()) == []

    page.get_by_role("button", name="Log out").click()
    log_in(page, console.url, "admin")
    page.goto(console.url + "/audit?user=operator")
    table = page.locator("table.list")
    expect(table).to_contain_text("quarantine-release")
    expect(table).to_contain_text("quarantine-delete")
    expect(table).to_contain_text(f"quarantined object #{bad} deleted")


def test_an_admin_downloads_a_quarantined_file_audited_and_named_by_id(
        admin_console: tuple[Console, Spool], page: Page) -> None:
    console, spool = admin_console
    data = encoded(patient_ct())
    qid = _quarantine(console, spool, data, "internal error (OSError)")
    log_in(page, console.url, "admin")
    page.goto(console.url + "/quarantine")
    with page.expect_download() as info:
        page.get_by_role("link", name="Download").click()
    got = info.value
    assert got.suggested_filename == f"quarantine-{qid}.dcm"
    assert Path(got.path()).read_bytes() == data
    page.goto(console.url + "/audit?action=download")
    expect(page.locator("table.list")).to_contain_text(f"quarantined object #{qid}")


def test_a_user_added_on_the_users_page_logs_in_and_a_disabled_one_cannot(
        admin_console: tuple[Console, Spool], page: Page) -> None:
    console, _ = admin_console
    ApiTokens(console.ctx.accounts).add("pacs-bridge", Role.OPERATOR, expires_days=30)
    new_password = "correct horse battery staple"
    log_in(page, console.url, "admin")
    page.goto(console.url + "/users")
    page.fill("#new-name", "dr.weber")
    page.select_option("#new-role", "radiologist")
    page.fill("#new-password", new_password)
    page.fill("#new-again", new_password + "x")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator(".message.error")).to_contain_text("The two passwords differ")
    page.fill("#new-name", "dr.weber")
    page.select_option("#new-role", "radiologist")
    page.fill("#new-password", new_password)
    page.fill("#new-again", new_password)
    page.get_by_role("button", name="Add user").click()
    expect(page.locator(".message.ok")).to_contain_text("User dr.weber was added")
    assert new_password not in page.content()
    expect(page.locator("tr", has_text="pacs-bridge")).to_contain_text("active")
    shoot(page, "users")

    page.locator("tr:has(th:text-is('clinician'))").get_by_role("button", name="Disable").click()
    expect(page.locator(".message.ok")).to_contain_text("clinician was disabled")
    page.locator("tr", has_text="pacs-bridge").get_by_role("button", name="Revoke").click()
    expect(page.locator("tr", has_text="pacs-bridge")).to_contain_text("revoked")
    page.get_by_role("button", name="Log out").click()

    log_in(page, console.url, "dr.weber", new_password)
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator(".who")).to_contain_text("dr.weber")
    page.get_by_role("button", name="Log out").click()
    log_in(page, console.url, "clinician")
    expect(page.locator("h1")).to_have_text("Log in")

    records = console.ctx.accounts.audit_page(limit=50)
    actions = {(r["action"], r["outcome"], r["detail"]) for r in records}
    assert ("user-add", "ok", "user:dr.weber (radiologist)") in actions
    assert ("user-disable", "ok", "user:clinician") in actions
    assert ("token-revoke", "ok", "token:pacs-bridge") in actions
    assert not any(new_password in (r["detail"] or "") for r in records)


def test_the_audit_filter_narrows_the_trail(admin_console: tuple[Console, Spool],
                                            page: Page) -> None:
    console, _ = admin_console
    for role in (Role.OPERATOR, Role.CLINICIAN):
        log_in(page, console.url, role.value)
        page.get_by_role("button", name="Log out").click()
    log_in(page, console.url, "admin")
    page.goto(console.url + "/audit")
    users = page.locator("table.list tbody tr td:nth-child(2)").all_inner_texts()
    assert {"operator", "clinician", "admin"} <= set(users)
    page.fill("#user", "clinician")
    page.fill("#action", "logout")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("clinician")
    csv = page.get_by_role("link", name="Download as CSV").get_attribute("href")
    assert csv == "/api/v1/audit.csv?action=logout&user=clinician"
    page.goto(console.url + "/audit")
    shoot(page, "audit")


def test_models_lists_the_loaded_model_and_the_missing_one(
        admin_console: tuple[Console, Spool], page: Page) -> None:
    console, _ = admin_console
    log_in(page, console.url, "clinician")
    page.goto(console.url + "/models")
    manifest = console.ctx.models["lung-ct"].manifest
    row = page.locator("tr", has_text="lung-ct")
    expect(row).to_contain_text(str(manifest.version))
    expect(row).to_contain_text("loaded")
    expect(row).to_contain_text(manifest.weights_sha256[:16])
    expect(page.locator("tr", has_text="brain-mask")).to_contain_text("not loaded")
    shoot(page, "models")


def test_the_pages_speak_german(admin_console: tuple[Console, Spool], browser: Browser) -> None:
    console, _ = admin_console
    context = browser.new_context(locale="de-DE", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    log_in(page, console.url, "admin")
    for path, heading in (("/quarantine", "Quarantäne"), ("/models", "Modelle"),
                          ("/audit", "Prüfprotokoll"), ("/users", "Benutzer")):
        page.goto(console.url + path)
        expect(page.locator("h1")).to_have_text(heading)
    shoot(page, "users-de")
    context.close()
