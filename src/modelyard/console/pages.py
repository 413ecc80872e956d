"""The console's pages and buttons: one handler per route, each admitting, reading through
:mod:`~modelyard.console.views` and rendering one template."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from modelyard.console import views
from modelyard.console.exchange import Request, Response, redirect
from modelyard.console.paging import filter_rows, page_number, paginate, sort_rows
from modelyard.console.render import render
from modelyard.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from modelyard.console.app import Console

#: a button's verb -> (the JSON API path under the model, the form fields it sends).
ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rollback": ("rollback", ()),
    "promote": ("promote", ("version",)),
    "start": ("deployments", ("version", "strategy", "steps", "every_s")),
    "rollout-promote": ("deployment/promote", ()),
    "rollout-abort": ("deployment/abort", ()),
    "rollout-pause": ("deployment/pause", ()),
    "rollout-resume": ("deployment/resume", ()),
    "rollout-rollback": ("deployment/rollback", ()),
}


def _html(template: str, request: Request, status: int = 200, **context: Any) -> Response:
    return Response(render(template, **request.context(**context)), status)


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{text[:40]!r} is not a time: write 2026-01-31T12:00") from None
    # a time with an offset (the page's script sends the viewer's time as UTC) or a bare one
    # (typed without JavaScript, read as UTC, as the form says)
    return found.astimezone(UTC) if found.tzinfo is not None else found.replace(tzinfo=UTC)


def _shown(request: Request, names: Any) -> set[str] | None:
    """The models a scoped key may read (None: every model)."""
    from modelyard.serving.access import in_scope

    return in_scope({"modelyard.identity": request.identity}, "read", names)


async def overview(request: Request) -> Response:
    await request.console.admit(request)
    rows = await views.overview_rows(request.console.server, None)
    allowed = _shown(request, [r["name"] for r in rows])
    rows = [r for r in rows if allowed is None or r["name"] in allowed]
    shown = filter_rows(rows, request.q("q"), ("name", "flavor", "pool", "rollout", "drift"))
    column = request.q("sort") or "name"
    desc = request.q("dir") == "desc"
    ordered = sort_rows(shown, column, views.OVERVIEW_COLUMNS, desc)
    page = paginate(ordered, page_number(request.q("page")))
    template = "overview_rows.html" if request.partial else "overview.html"
    return _html(template, request, page=page, total=len(rows), matched=len(shown),
                 sort=column, dir="desc" if desc else "asc", q=request.q("q") or "",
                 columns=views.OVERVIEW_COLUMNS, title="Overview")


async def model(request: Request, name: str) -> Response:
    await request.console.admit(request, "read", name)
    data = await views.model_page(request.console.server, name, page_number(request.q("page")),
                                  _time(request.q("at")))
    return _html("model.html", request, title=name, **data)


async def compare(request: Request, name: str) -> Response:
    await request.console.admit(request, "read", name)
    a, b = request.q("a"), request.q("b")
    if not (a and b and a.isdigit() and b.isdigit()):
        raise InputError("compare needs two version numbers: ?a=1&b=2")
    data = await views.version_pair(request.console.server, name, int(a), int(b))
    return _html("compare.html", request, title=f"{name}: v{a} and v{b}", **data)


async def card(request: Request, name: str, version: str) -> Response:
    await request.console.admit(request, "read", name)
    if not (version.isascii() and version.isdigit() and len(version) < 10):
        raise InputError(f"{version[:40]!r} is not a version number")
    body = await views.card_body(request.console.server, name, int(version))
    return _html("card.html", request, title=f"{name}:{version} model card", name=name,
                 version=int(version), body=body)


async def rollout(request: Request, name: str) -> Response:
    await request.console.admit(request, "read", name)
    data = await views.rollout_page(request.console.server, name)
    template = "rollout_live.html" if request.partial else "rollout.html"
    return _html(template, request, title=f"{name} rollout", **data)


async def runs(request: Request) -> Response:
    await request.console.admit(request)
    page = await views.runs_page(request.console.server, request.q("model"),
                                 page_number(request.q("page")))
    allowed = _shown(request, {r.model for r in page.rows})
    rows = [r for r in page.rows if allowed is None or r.model in allowed]
    return _html("runs.html", request, page=page, rows=rows, model=request.q("model") or "",
                 title="Runs")


async def run(request: Request, run_id: str) -> Response:
    await request.console.admit(request)
    server = request.console.server
    found = await server.catalog.io(server.catalog.registry.get_run, run_id)
    await request.console.admit(request, "read", found.model)
    return _html("run.html", request, run=found, title=f"run {found.id[:12]}")


async def audit(request: Request) -> Response:
    await request.console.admit(request)
    filters = {"target": request.q("model"), "actor": request.q("actor"),
               "action": request.q("action"), "since": _time(request.q("since")),
               "until": _time(request.q("until"))}
    page = await views.audit_page(request.console.server, filters,
                                  page_number(request.q("page")))
    allowed = _shown(request, {e.target.split(":")[0].split("@")[0] for e in page.rows})
    rows = [e for e in page.rows
            if allowed is None or e.target.split(":")[0].split("@")[0] in allowed]
    raw = {k: request.q(k) or "" for k in ("model", "actor", "action", "since", "until")}
    return _html("audit.html", request, page=page, rows=rows, filters=raw, title="Audit",
                 query=urlencode({k: v for k, v in raw.items() if v}))


async def monitoring(request: Request, name: str) -> Response:
    await request.console.admit(request, "read", name)
    hours = request.q("hours")
    span = int(hours) if hours and hours.isdigit() and 0 < int(hours) <= 24 * 30 else 24
    since = datetime.now(UTC) - timedelta(hours=span)
    data = await views.monitoring_page(request.console.server, name, since)
    return _html("monitoring.html", request, title=f"{name} monitoring", hours=span, **data)


async def login_form(request: Request) -> Response:
    return _html("login.html", request, title="Sign in", next=request.q("next") or "/ui/",
                 error=None)


async def login(request: Request) -> Response:
    key = request.form.get("key", "").strip()
    if not key:
        return _html("login.html", request, 400, title="Sign in", error="enter an API key",
                     next=request.form.get("next") or "/ui/")
    return await request.console.login(request, key)


async def logout(request: Request) -> Response:
    return request.console.logout(request)


async def static(request: Request, name: str) -> Response:
    return request.console.static(name)


async def vendor(request: Request, name: str) -> Response:
    return request.console.static(f"vendor/{name}")


async def act(request: Request, name: str, verb: str) -> Response:
    """A button: admitted for ``deploy``, then sent to the JSON API with the same key."""
    if verb not in ACTIONS:
        raise NotFoundError(f"no console action {verb[:40]!r}")
    await request.console.admit(request, "deploy", name)
    path, fields = ACTIONS[verb]
    body = _body(request.form, fields)
    body["reason"] = (request.form.get("reason") or f"console: {verb}")[:1000]
    status, answer = await request.console.call_api(
        request, f"/api/v1/models/{quote(name, safe='')}/{path}", body)
    back = request.form.get("back") or f"/ui/models/{quote(name, safe='')}"
    if not back.startswith("/ui/"):
        back = "/ui/"
    if status >= 400:
        message = (answer or {}).get("message", f"the server answered {status}")
        return redirect(f"{back}?{urlencode({'err': message[:300]})}")
    return redirect(f"{back}?{urlencode({'msg': f'{verb}: done'})}")


def _body(form: dict[str, str], fields: tuple[str, ...]) -> dict[str, Any]:
    """The JSON body a button's form fields make (numbers as numbers; empty fields left out)."""
    body: dict[str, Any] = {}
    for field in fields:
        value = form.get(field, "").strip()
        if not value:
            continue
        if field == "version":
            body[field] = int(value) if value.isdigit() else value
        elif field == "steps":
            try:
                body[field] = [int(s) for s in value.replace(",", " ").split()]
            except ValueError:
                raise InputError(f"steps {value[:40]!r}: write whole percents, e.g. 10 50"
                                 ) from None
        elif field == "every_s":
            try:
                body[field] = float(value)
            except ValueError:
                raise InputError(f"every {value[:20]!r} is not a number of seconds") from None
        else:
            body[field] = value
    return body


def routes(console: Console) -> list[tuple[str, str, Any]]:
    """The console's route table (paths under ``/ui``)."""
    return [
        ("GET", "/", overview),
        ("GET", "/models/{name}", model),
        ("GET", "/models/{name}/compare", compare),
        ("GET", "/models/{name}/versions/{version}/card", card),
        ("GET", "/models/{name}/rollout", rollout),
        ("GET", "/models/{name}/monitoring", monitoring),
        ("POST", "/models/{name}/act/{verb}", act),
        ("GET", "/runs", runs),
        ("GET", "/runs/{run_id}", run),
        ("GET", "/audit", audit),
        ("GET", "/login", login_form),
        ("POST", "/login", login),
        ("POST", "/logout", logout),
        ("GET", "/static/{name}", static),
        ("GET", "/static/vendor/{name}", vendor),
    ]


__all__ = ["ACTIONS", "routes"]
