"""The console's pages: Login, Overview, Studies, Study, Failures (issue 14, first slice).

Routes are thin: each reads through ``figures`` / ``listing``, acts through ``actions`` (the
API's functions) and renders one template. Every route is declared through
``node.web.access.page_route`` with its roles, in the one role table the access test walks.
"""

from __future__ import annotations

import secrets
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from node.core.accounts import LoginRefused, Session
from node.core.errors import NodeError, UnknownStudy
from node.core.jobstate import JobState
from node.core.ledger import StudyRow, utcnow
from node.web import feedback, identity, notes, queries, results, search, statistics
from node.web.access import EVERYONE, OPERATIONS, PUBLIC, page_route
from node.web.console import actions, charts, figures, keyimage_files, listing, priors, words
from node.web.console.deps import page_allow, page_session, safe_next
from node.web.console.render import page
from node.web.context import WebContext
from node.web.deps import COOKIE, address, context

router = APIRouter()
_CTX, _USER = Depends(context), Depends(page_session)

#: the login form's own CSRF token (no session yet): a SameSite=Strict cookie the form echoes
LOGIN_COOKIE = "dicom_node_login"
#: rows on one page of the Studies list
PAGE_SIZE = 50
#: the Overview reloads itself this often (seconds)
REFRESH_S = 30


def _page(request: Request, template: str, user: Session | None, *, active: str = "",
          status: int = 200, **context: Any) -> HTMLResponse:
    return page(request, template, status=status, user=user, active=active,
                can_retry=user is not None and user.role in OPERATIONS, states=words.STATES,
                roles=words.ROLES, item_states=words.ITEM_STATES, **context)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# ------------------------------------------------------------------ login, logout


@page_route(router, "GET", "/login", PUBLIC, page_allow, response_model=None)
def login_form(request: Request, next_path: str = Query("/", alias="next", max_length=512),
               ctx: WebContext = _CTX) -> Response:
    token = request.cookies.get(COOKIE)
    if token and ctx.accounts.session(token) is not None:
        return _see_other(safe_next(next_path))
    return _login_page(request, ctx, safe_next(next_path))


def _login_page(request: Request, ctx: WebContext, next_path: str, *, error: str = "",
                name: str = "", status: int = 200) -> HTMLResponse:
    form_token = secrets.token_urlsafe(24)
    response = _page(request, "login.html", None, status=status, error=error, name=name,
                     next_path=next_path, form_token=form_token)
    response.set_cookie(LOGIN_COOKIE, form_token, httponly=True, samesite="strict",
                        secure=ctx.settings.web.tls, path="/login", max_age=3600)
    return response


@page_route(router, "POST", "/login", PUBLIC, page_allow, response_model=None)
def login(request: Request, name: str = Form("", max_length=64),
          password: str = Form("", max_length=1024), form_token: str = Form("", max_length=64),
          next_path: str = Form("/", alias="next", max_length=512),
          ctx: WebContext = _CTX) -> Response:
    """Log in from the form: the API's accounts and session cookie."""
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(form_token.encode(), expected.encode()):
        return _login_page(request, ctx, safe_next(next_path), error="expired", name=name,
                           status=403)
    try:
        opened = ctx.accounts.login(name, password, address(request))
    except LoginRefused as exc:
        return _login_page(request, ctx, safe_next(next_path), name=name,
                           error="locked" if exc.locked else "wrong",
                           status=429 if exc.locked else 401)
    response = _see_other(safe_next(next_path))
    response.set_cookie(COOKIE, opened.token, httponly=True, samesite="strict",
                        secure=ctx.settings.web.tls, path="/",
                        max_age=int(ctx.settings.web.session_ttl_s))
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@page_route(router, "POST", "/logout", EVERYONE, page_allow, response_model=None)
def logout(request: Request, user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    ctx.accounts.logout(request.cookies.get(COOKIE, ""))
    ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                        action="logout", outcome="ok")
    response = _see_other("/login")
    response.delete_cookie(COOKIE, path="/")
    return response


# ------------------------------------------------------------------ overview


@page_route(router, "GET", "/", EVERYONE, page_allow, response_model=None)
def overview(request: Request, user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    """The statistics route's figures (the ledger's rollup: the same cost at any age), the
    dead letters, the disk, the models and each destination's last success and error."""
    engine = ctx.ledger.engine
    stats = statistics.summarize(engine, utcnow(), days=figures.DAYS, weeks=1)
    counts: dict[str, int] = stats["states"]
    days = [(date.fromisoformat(d["date"]), int(d["studies"])) for d in stats["per_day"]]
    return _page(
        request, "overview.html", user, active="overview", refresh_s=REFRESH_S, now=utcnow(),
        counts=[(state, counts[state]) for state in words.FLOW],
        today=days[-1][1], week=sum(n for _, n in days[-7:]), month=sum(n for _, n in days),
        chart=charts.bar_chart(days), utc_days=figures.utc_offset_minutes() != 0,
        to_report=stats["completion_to_reported_s"], failed_jobs=counts[JobState.FAILED],
        failed_deliveries=figures.failed_deliveries(engine),
        quarantined=ctx.ledger.quarantine_count(), disk=figures.disk(ctx.settings),
        models=figures.models(ctx.models, ctx.expected_models),
        destinations=figures.destination_status(engine, ctx.settings))


# ------------------------------------------------------------------ studies


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _utc(day: date) -> datetime:
    """Local midnight at the start of ``day`` as naive UTC, as the ledger keeps times."""
    return datetime(day.year, day.month, day.day) - timedelta(
        minutes=figures.utc_offset_minutes())


@page_route(router, "GET", "/studies", EVERYONE, page_allow, response_model=None)
def studies(request: Request, state: str = "", from_: str = Query("", alias="from", max_length=10),
            to: str = Query("", max_length=10), model: str = Query("", max_length=64),
            triage: str = Query("", max_length=16), ae: str = Query("", max_length=16),
            pid: str = Query("", max_length=64), issuer: str = Query("", max_length=64),
            acc: str = Query("", max_length=16),
            before: int | None = None, after: int | None = None,
            user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    chosen = JobState(state) if state in JobState.__members__ else None
    may_search = user.role in identity.IDENTITY_ROLES
    pid, issuer, acc = (pid.strip(), issuer.strip(), acc.strip()) if may_search else ("", "", "")
    try:  # a patient ID or accession number, found through its keyed pseudonym
        by_identity = search.conditions(ctx.settings, patient_id=pid, issuer=issuer,
                                        accession=acc)
    except NodeError:
        by_identity, no_key = [], True
    else:
        no_key = False
    if pid or acc:  # a search by identity is a look at identity: audited, the value is not
        ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                            action="search-identity", outcome="refused" if no_key else "ok",
                            detail=" ".join(n for n, v in (("patient-id", pid),
                                                           ("accession", acc)) if v))
    first, last = _day(from_), _day(to)
    try:  # the API's own checks of a model name, a triage level and an AE title
        narrow = queries.StudyFilter.parse(model=model or None, triage=triage or None,
                                           calling_ae=ae or None)
    except queries.BadFilter:
        narrow, bad = queries.StudyFilter(), True
    else:
        bad = bool(state and not chosen)
    try:
        found = listing.studies_page(
            ctx.ledger, [chosen] if chosen else list(JobState), limit=PAGE_SIZE,
            since=_utc(first) if first else None,
            until=_utc(last + timedelta(days=1)) if last else None,
            before=before, after=None if before is not None else after,
            narrow=[*listing.conditions(narrow), *by_identity])
    except UnknownStudy:
        return _page(request, "error.html", user, status=404, reason="unknown-job")
    filters = {"state": chosen.value if chosen else "",
               "from": first.isoformat() if first else "", "to": last.isoformat() if last else "",
               "model": narrow.model or "", "triage": narrow.triage.value if narrow.triage else "",
               "ae": narrow.calling_ae or "", "pid": pid, "issuer": issuer, "acc": acc}
    return _page(
        request, "studies.html", user, active="studies", page=found, filters=filters,
        flow=words.FLOW, triages=words.TRIAGE, models=sorted(ctx.models), bad_filter=bad,
        may_search=may_search, no_key=no_key,
        newer_url=_url(filters, after=found.newer) if found.newer else None,
        older_url=_url(filters, before=found.older) if found.older else None)


def _url(filters: dict[str, str], **cursor: int) -> str:
    return "/studies?" + urlencode({**{k: v for k, v in filters.items() if v}, **cursor})


@page_route(router, "GET", "/studies/{study_id}", EVERYONE, page_allow, response_model=None)
def study(request: Request, study_id: int, done: str = "",
          preset: str = Query("", max_length=32), overlay: str = Query("", max_length=3),
          user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    try:
        row = ctx.ledger.study_by_id(study_id)
    except UnknownStudy:
        return _page(request, "error.html", user, status=404, reason="unknown-job")
    patient = None
    if user.role in identity.IDENTITY_ROLES:  # as the API does: shown to them, each view audited
        patient = identity.patient(ctx, row)
        ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                            action="view-identity", study_id=row.id,
                            outcome="ok" if patient else "unavailable")
    return _page(
        request, "study.html", user, active="studies", row=row, done=done,
        sees_identity=user.role in identity.IDENTITY_ROLES, patient=patient,
        runs=results.runs(ctx, row.id, objects=False), triages=words.TRIAGE,
        series=listing.series(ctx.ledger, ctx.settings.spool_path, row.id),
        outbox=ctx.outbox.items(row.id), timeline=listing.timeline(ctx.ledger, row.id),
        feedback=feedback.study_panel(ctx, user, row.id),
        notes=notes.study_panel(ctx, user, row),  # report versions, e-mail (h2)
        reads_files=user.role in results.IDENTIFIED_FILES, pacs_link=_pacs_link(ctx, row, user),
        # the key images: for the roles that read the result files (keyimage_routes)
        key_images=(keyimage_files.panel(ctx, row, preset)
                    if user.role in results.IDENTIFIED_FILES else []),
        priors=priors.table(ctx, row) if user.role in results.IDENTIFIED_FILES else None,
        overlay_on=overlay != "off")


def _pacs_link(ctx: WebContext, row: StudyRow, user: Session) -> str:
    """The study in the hospital's PACS viewer (``web.pacs_viewer_url``), for the roles that
    see the patient's identity; "" otherwise."""
    template = ctx.settings.web.pacs_viewer_url
    if not template or user.role not in identity.IDENTITY_ROLES:
        return ""
    return template.format(study_uid=quote(row.study_instance_uid, safe=""))


@page_route(router, "POST", "/studies/{study_id}/retry", OPERATIONS, page_allow,
            response_model=None)
def retry(request: Request, study_id: int, back: str = Form(""), user: Session = _USER,
          ctx: WebContext = _CTX) -> Response:
    try:
        row = ctx.ledger.study_by_id(study_id)
    except UnknownStudy:
        return _page(request, "error.html", user, status=404, reason="unknown-job")
    outcome = "retried" if actions.retry(ctx, row, user, address(request)) else "refused"
    if back == "failures":
        return _see_other(f"/failures?done={outcome}")
    return _see_other(f"/studies/{row.id}?done={outcome}")


# ------------------------------------------------------------------ failures


@page_route(router, "GET", "/failures", OPERATIONS, page_allow, response_model=None)
def failures(request: Request, done: str = "", n: int = 0, user: Session = _USER,
             ctx: WebContext = _CTX) -> Response:
    return _page(request, "failures.html", user, active="failures", done=done, retried=n,
                 found=listing.failures(ctx.ledger, ctx.outbox))


@page_route(router, "POST", "/failures/retry-all", OPERATIONS, page_allow, response_model=None)
def retry_all(request: Request, user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    count = actions.retry_all(ctx, user, address(request))
    return _see_other(f"/failures?done=retried-all&n={count}")
