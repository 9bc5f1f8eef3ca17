"""The console's web app: pages over a party's node (or, for a regulator, over every party).

Every page reads its node through the one :class:`~bund.parties.client.NodeClient` the console
was started with, as the ``bund`` command does, and every action is one of the command's:
approve (signed here with the approver key that this console's user holds on this machine,
:func:`bund.parties.approvals.sign_approval`), deny, and the regulator's audit. A console that
holds no approver key (a shared one) offers no approval.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from bund.compute.errors import BundError
from bund.parties.approvals import ApprovalRequest, sign_approval
from bund.parties.client import NodeClient
from bund.parties.console.charts import durations_png, png_data_url
from bund.parties.console.live import event_stream
from bund.parties.console.model import (
    ConsoleError,
    budget_history,
    budget_rows,
    job_records,
    search_records,
)
from bund.parties.console.security import (
    CSRF_FIELD,
    CsrfError,
    SecurityHeaders,
    checked_form,
    csrf_token,
    keep_csrf,
)
from bund.parties.lifecycle.states import JobState, JobStatus, is_terminal
from bund.parties.regulator import AuditOutcome, PulledLog, RegulatorConfig, pull_log
from bund.parties.views import record_line, shown_value

#: Hosts a loopback console answers to (others are refused: DNS rebinding).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
#: How many of the newest jobs the jobs page asks the node for.
JOBS_LIMIT = 200


@dataclass(frozen=True)
class PartyAccess:
    """What a party's console works with.

    Attributes:
        client: The party's node, called with an operator credential.
        audit_key: The party's audit public key as this console's user holds it (verifies the
            log; the node's word about its key is trusted for nothing).
        approver_key: The approver's Ed25519 key on this machine; None on a shared console,
            which then offers no approval.
    """

    client: NodeClient
    audit_key: Ed25519PublicKey
    approver_key: Path | None = None


@dataclass
class RegulatorAccess:
    """What a regulator's console works with: its configuration, and the last audit's outcome.

    Attributes:
        config: ``regulator.toml``.
        audit: Runs an audit (:func:`bund.parties.regulator.audit_federation` by default).
    """

    config: RegulatorConfig
    audit: Callable[[RegulatorConfig], AuditOutcome]
    last: AuditOutcome | None = None

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def run(self) -> AuditOutcome:
        """Audit every party now; keep the outcome for the page and the report download."""
        with self.lock:
            self.last = self.audit(self.config)
            return self.last


def _age(timestamp: str, now: dt.datetime | None = None) -> str:
    """``"3 min ago"`` for an RFC 3339 UTC time; the text itself when it does not parse."""
    try:
        then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = int(((now or dt.datetime.now(dt.UTC)) - then).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("bund.parties.console", "templates"),
        autoescape=True,  # every page: peers' names, purposes and reasons are text, never markup
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = _age
    env.filters["shown"] = lambda value, key: shown_value(key, value)
    env.filters["record_line"] = record_line
    env.globals["is_terminal"] = is_terminal
    env.globals["JobState"] = JobState
    return env


def payload_digest(request: ApprovalRequest) -> str:
    """The sha256 of the bytes an approval signs: the page carries it, the POST must match."""
    return hashlib.sha256(request.payload()).hexdigest()


class Pages:
    """The console's routes over one party's node or a regulator's configuration."""

    def __init__(self, party: PartyAccess | None, regulator: RegulatorAccess | None) -> None:
        if (party is None) == (regulator is None):
            raise ValueError("a console serves one party or a regulator")
        self.party = party
        self.regulator = regulator
        self.env = _environment()

    # -- rendering --------------------------------------------------------------------------

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Response:
        """A page from ``template``, with the layout's context and the CSRF cookie."""
        base = {
            "request": request,
            "csrf_field": CSRF_FIELD,
            "csrf": csrf_token(request),
            "mode": "regulator" if self.regulator is not None else "party",
            "who": self.party.client.party if self.party is not None else "regulator",
            "approver": self.party is not None and self.party.approver_key is not None,
            "notice": request.query_params.get("done", ""),
        }
        html = self.env.get_template(template).render(**base, **context)
        return keep_csrf(request, HTMLResponse(html, status_code))

    def failure(self, request: Request, message: str, status_code: int) -> Response:
        """The error page: what went wrong, in the node's words (escaped like everything)."""
        return self.render(request, "error.html", status_code, message=message)

    def _node(self) -> PartyAccess:
        if self.party is None:
            raise ConsoleError("this is a regulator's console: it serves no party's node")
        return self.party

    def _pull(self) -> PulledLog:
        node = self._node()
        return pull_log(node.client, node.audit_key)

    # -- pages ------------------------------------------------------------------------------

    def home(self, request: Request) -> Response:
        """The jobs page, or the regulator's."""
        return RedirectResponse("/regulator" if self.regulator else "/jobs", 303)

    def jobs(self, request: Request) -> Response:
        """The newest jobs, filtered by state, protocol, peer and text."""
        q = request.query_params
        state, protocol = q.get("state", ""), q.get("protocol", "").strip()
        peer, text = q.get("peer", "").strip(), q.get("q", "").strip()
        states = [s for s in JobState if s.value == state]
        jobs = self._node().client.list_jobs(JOBS_LIMIT, states=states)
        shown = [
            s
            for s in jobs
            if (not protocol or s.spec.protocol == protocol)
            and (not peer or peer in s.spec.parties)
            and (
                not text or s.spec.job_id.startswith(text) or text.lower() in s.spec.purpose.lower()
            )
        ]
        return self.render(
            request,
            "jobs.html",
            jobs=shown,
            total=len(jobs),
            states=list(JobState),
            filters={"state": state, "protocol": protocol, "peer": peer, "q": text},
            protocols=sorted({s.spec.protocol for s in jobs}),
        )

    def job(self, request: Request) -> Response:
        """One job: spec, answers, life, messages, receipt, reason, and its result if held."""
        job_id = request.path_params["job_id"]
        client = self._node().client
        status = client.status(job_id)
        records = job_records(client.job_log(job_id))
        learns = dict(records.learns)
        if not learns and status.state is JobState.AWAITING_APPROVAL:
            try:
                learns = dict(client.approval_request(job_id).learns)
            except BundError:
                pass  # this party brings no dataset: nothing for it to approve
        return self.render(
            request,
            "job.html",
            status=status,
            records=records,
            learns=sorted(learns.items()),
            durations=png_data_url(durations_png(records.steps)),
        )

    def live(self, request: Request) -> Response:
        """Server-Sent Events: the job's status each time it changes (the page's script)."""
        job_id = request.path_params["job_id"]
        return StreamingResponse(
            event_stream(self._node().client, job_id),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    def result(self, request: Request) -> Response:
        """The job's result held here: its summary and its files (read as ``bund job result``)."""
        job_id = request.path_params["job_id"]
        client = self._node().client
        result = client.result_info(job_id)
        files = list(result.artifact_sizes.items())
        # The charts the protocol drew (ROC, KS, training curves...), when they are PNG; only
        # these are read here (an intersection.csv may be gigabytes).
        charts = [
            (name, url)
            for name, size in files
            if name.endswith(".png")
            and (url := png_data_url(b"".join(client.artifact_pages(job_id, name, size))))
        ]
        return self.render(
            request,
            "result.html",
            job_id=job_id,
            summary=result.summary,
            files=files,
            charts=charts,
        )

    def artifact(self, request: Request) -> Response:
        """One result file, as a download (never shown inline)."""
        job_id, name = request.path_params["job_id"], request.path_params["name"]
        client = self._node().client
        result = client.result_info(job_id)
        if name not in result.artifact_sizes:
            return self.failure(request, f"job {job_id} has no result file {name}", 404)
        size = result.artifact_sizes[name]
        filename = Path(name).name.replace('"', "")
        return StreamingResponse(  # page by page: the file is never whole in memory here
            client.artifact_pages(job_id, name, size),
            media_type="application/octet-stream",
            headers={
                "content-disposition": f'attachment; filename="{filename}"',
                "content-length": str(size),
            },
        )

    def approvals(self, request: Request) -> Response:
        """What awaits this party's approval, each with the summary ``bund job pending`` shows."""
        client = self._node().client
        jobs = client.list_jobs(JOBS_LIMIT, states=(JobState.AWAITING_APPROVAL,))
        pending: list[tuple[JobStatus, list[str] | None, str, str]] = []
        for status in jobs:
            try:
                approval = client.approval_request(status.spec.job_id)
            except BundError as exc:  # answered meanwhile, or no dataset of ours
                pending.append((status, None, str(exc), ""))
                continue
            pending.append((status, approval.summary_lines(), "", payload_digest(approval)))
        return self.render(request, "approvals.html", pending=pending)

    async def approve(self, request: Request) -> Response:
        """Sign this party's approval of a job with the approver key on this machine."""
        form = await checked_form(request)
        job_id = request.path_params["job_id"]
        node = self._node()
        if node.approver_key is None:
            return self.failure(
                request, "this console holds no approver key: it offers no approval", 403
            )
        key = node.approver_key

        def sign_and_send() -> None:
            approval = node.client.approval_request(job_id)
            shown = str(form.get("digest", ""))
            if not hmac.compare_digest(shown, payload_digest(approval)):
                raise ConsoleError(
                    f"what job {job_id} asks to approve changed since the page was read "
                    "(its code or dataset version): read it again before approving"
                )
            node.client.approve(job_id, sign_approval(approval, key))

        await run_in_threadpool(sign_and_send)
        return RedirectResponse(f"/jobs/{job_id}?done=approved", 303)

    async def deny(self, request: Request) -> Response:
        """Refuse a job at this party's node, with the reason the requester will read."""
        form = await checked_form(request)
        job_id = request.path_params["job_id"]
        reason = str(form.get("reason", "")).strip()
        if not reason:
            return self.failure(request, "say why the job is denied: the requester reads it", 400)
        await run_in_threadpool(self._node().client.deny, job_id, reason)
        return RedirectResponse(f"/jobs/{job_id}?done=denied", 303)

    def budget(self, request: Request) -> Response:
        """Each dataset's budget (decimals, rounded up), and a chart of what was spent."""
        from bund.parties.report import budget_chart_png

        pulled = self._pull()
        history = budget_history(pulled.records)
        return self.render(
            request,
            "budget.html",
            rows=budget_rows(pulled.records),
            history=history,
            chart=png_data_url(budget_chart_png(history)),
            verification=pulled.verification,
        )

    def audit(self, request: Request) -> Response:
        """The log verified now (naming its first bad record), and searched by job or event."""
        q = request.query_params
        job, event = q.get("job", ""), q.get("event", "")
        pulled = self._pull()
        found, matched = search_records(pulled.records, job, event)
        return self.render(
            request,
            "audit.html",
            pulled=pulled,
            verification=pulled.verification,
            records=list(reversed(found)),
            matched=matched,
            filters={"job": job, "event": event},
        )

    # -- the regulator ----------------------------------------------------------------------

    def _regulator(self) -> RegulatorAccess:
        if self.regulator is None:
            raise ConsoleError("this is a party's console: start it with --regulator for audits")
        return self.regulator

    def regulator_page(self, request: Request) -> Response:
        """The last audit's reconciliation: parties, findings, jobs, budget."""
        from bund.parties.report import budget_chart_png

        outcome = self._regulator().last
        chart = png_data_url(budget_chart_png(outcome.budget)) if outcome else ""
        return self.render(request, "regulator.html", outcome=outcome, chart=chart)

    async def run_audit(self, request: Request) -> Response:
        """Pull, verify and reconcile every party's log now (as ``bund audit report``)."""
        await checked_form(request)
        await run_in_threadpool(self._regulator().run)
        return RedirectResponse("/regulator?done=audited", 303)

    def report(self, request: Request) -> Response:
        """The last audit as the self-contained HTML report, for download."""
        from bund.parties.report import render_report

        outcome = self._regulator().last
        if outcome is None:
            return self.failure(request, "no audit has run yet: run one first", 404)
        name = f"bund-audit-{outcome.generated_at.replace(':', '')}.html"
        return Response(
            render_report(outcome),
            media_type="text/html; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )


def _guarded(pages: Pages, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """``handler`` with the node's and the console's errors shown as pages."""
    import inspect

    if inspect.iscoroutinefunction(handler):

        async def run_async(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except CsrfError as exc:
                return pages.failure(request, str(exc), 403)
            except BundError as exc:
                return pages.failure(request, str(exc), 502)
            return response

        return run_async

    def run(request: Request) -> Response:
        try:
            response: Response = handler(request)
        except BundError as exc:
            return pages.failure(request, str(exc), 502)
        return response

    return run


def create_app(
    party: PartyAccess | None = None,
    regulator: RegulatorAccess | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
) -> Starlette:
    """The console as an ASGI app, for one party's node or for a regulator.

    Args:
        party: A party's node and keys (``bund console --config``).
        regulator: A regulator's configuration (``bund console --regulator``).
        allowed_hosts: The ``Host`` names it answers to (loopback names by default).
    """
    pages = Pages(party, regulator)

    def route(path: str, handler: Callable[[Request], Any], post: bool = False) -> Route:
        return Route(path, _guarded(pages, handler), methods=["POST"] if post else ["GET"])

    routes: list[BaseRoute] = [route("/", pages.home)]
    if party is not None:
        routes += [
            route("/jobs", pages.jobs),
            route("/jobs/{job_id}", pages.job),
            route("/jobs/{job_id}/live", pages.live),
            route("/jobs/{job_id}/result", pages.result),
            route("/jobs/{job_id}/result/{name}", pages.artifact),
            route("/approvals", pages.approvals),
            route("/approvals/{job_id}/approve", pages.approve, post=True),
            route("/approvals/{job_id}/deny", pages.deny, post=True),
            route("/budget", pages.budget),
            route("/audit", pages.audit),
        ]
    else:
        routes += [
            route("/regulator", pages.regulator_page),
            route("/regulator/audit", pages.run_audit, post=True),
            route("/regulator/report", pages.report),
        ]
    static = StaticFiles(packages=[("bund.parties.console", "static")])
    routes.append(Mount("/static", static, name="static"))
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
        ],
    )
