"""The ``bund`` command: federation and parties, the node, jobs, audit, data, benchmarks, demo.

No ``from __future__ import annotations`` here: typer reads every command's parameters from its
signature at each start, and string annotations cost it about 20 ms of ``eval`` (names that
load lazily are quoted instead).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast, get_args

import typer
from rich.console import Console
from rich.markup import escape

from bund.compute.errors import BundError

# cli_env first, for its effect: it must run before gRPC loads.
from bund.parties import cli_env
from bund.parties.roles import ROLES

# What `bund --help` and every command's start need is above; the node's modules (gRPC,
# cryptography, pydantic, numpy) load when a command uses them (tests/parties/test_cli_imports.py).
if TYPE_CHECKING:
    from rich.table import Table as RichTable

    from bund.parties import identity
    from bund.parties.audit import VerificationReport
    from bund.parties.client import NodeClient
    from bund.parties.config import NodeConfig
    from bund.parties.jobs import JobSpec
    from bund.parties.lifecycle.states import JobStatus
    from bund.parties.lifecycle.store import ResultInfo
    from bund.parties.operator_file import OperatorConfig
else:
    identity = cli_env.lazy_module("bund.parties.identity")


def _group(text: str) -> typer.Typer:
    """A command group with plain (click's) help.

    Typer's rich help loads rich.markdown and rich.traceback: about 70 ms of CPU, of a start
    that must stay under 150 ms.
    """
    return typer.Typer(help=text, no_args_is_help=True, rich_markup_mode=None)


app = _group("Bund: privacy-preserving joint computation between party nodes.")
federation_app = _group("Federation CA, roster and revocations.")
roster_app = _group("The federation's signed roster of parties.")
party_app = _group("Party certificates and keys.")
operator_app = _group("A party's operator credentials.")
job_app = _group("Submit and follow jobs.")
audit_app = _group("Verify and export audit logs.")
data_app = _group("Demo datasets.")
app.add_typer(federation_app, name="federation")
federation_app.add_typer(roster_app, name="roster")
app.add_typer(party_app, name="party")
app.add_typer(operator_app, name="operator")
app.add_typer(job_app, name="job")
app.add_typer(audit_app, name="audit")
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The node's node.toml.")]
OperatorOpt = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="An operator.toml (an operator credential), or node.toml on the node's host.",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (keys: docs/deploy.md).")
]
FederationOpt = Annotated[
    Path, typer.Option("--federation", help="The federation's directory (ca.key, roster.json).")
]


def _version(value: bool) -> None:
    if value:
        from bund.parties.oplog import version

        typer.echo(f"bund {version()}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Bund: privacy-preserving joint computation between party nodes."""


def _table(**options: object) -> "RichTable":
    """A rich table (rich.table loads with the first one)."""
    from rich.table import Table

    return Table(**options)  # type: ignore[arg-type]


def _print_json(document: object) -> None:
    from bund.parties.views import dumps

    typer.echo(dumps(document))


def _fail(message: str, code: int = 1) -> typer.Exit:
    # may quote a peer: no markup; never wrapped, so a key or a path can be copied whole
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _config(path: Path) -> "NodeConfig":
    from bund.parties.config import load_config

    try:
        return load_config(path)
    except BundError as exc:
        raise _fail(str(exc)) from None


def _is_operator_file(path: Path) -> bool:
    from bund.parties.operator_file import is_operator_file

    try:
        return is_operator_file(path)
    except BundError as exc:
        raise _fail(str(exc)) from None


def _operator(path: Path) -> "tuple[OperatorConfig, NodeConfig | None]":
    """The operator credential ``path`` names: an operator.toml (no pydantic), or a node.toml.

    The node checks that the certificate is an operator credential of its party and refuses
    another in words: reading it here too would cost each command 40 ms of ``cryptography.x509``.
    """
    from bund.parties.operator_file import load_cli_config

    try:
        return load_cli_config(path, check_credential=False)
    except BundError as exc:
        raise _fail(str(exc)) from None


def operator_address(config: "OperatorConfig") -> str:
    """Where the operator's node listens: ``node``, or its port file on this host."""
    if config.node is not None:
        return config.node
    assert config.port_file is not None  # load_operator_config checks one of them is set
    try:
        port = config.port_file.read_text().strip()
    except FileNotFoundError:
        raise _fail(
            f"the node is not running ({config.port_file} is missing); start it with `bund serve`"
        ) from None
    return f"127.0.0.1:{port}"


def _client(config: "OperatorConfig") -> "NodeClient":
    """A client to the party's own node, presenting the operator credential."""
    from bund.parties.client import NodeClient

    for what, path in (("certificate", config.tls.cert), ("key", config.tls.key)):
        if not path.is_file():
            raise _fail(
                f"operator {what} {path} not found: operator calls need an operator credential "
                f"(bund operator issue NAME --party DIR --out DIR), not the node's certificate"
            )
    try:
        return NodeClient(
            operator_address(config), config.party, config.tls, config.max_message_bytes
        )
    except OSError as exc:
        raise _fail(
            f"cannot read {exc.filename}: {exc.strerror} (check [tls] in {config.source})"
        ) from None


# -- federation and parties ----------------------------------------------------------------


@federation_app.command("init")
def federation_init(
    directory: Annotated[Path, typer.Argument(help="Where to write ca.key (0600) and ca.pem.")],
    name: Annotated[str, typer.Option(help="Federation name.")] = "bund",
) -> None:
    """Create a federation CA."""
    try:
        cert = identity.create_federation(directory, name)
    except BundError as exc:
        raise _fail(str(exc)) from None
    console.print(f"federation [bold]{name}[/]: CA certificate {cert}, roster and revocations")


@roster_app.command("add")
def roster_add(
    name: Annotated[str, typer.Argument(help="The party's name.")],
    role: Annotated[str, typer.Option(help="|".join(ROLES))],
    cert: Annotated[Path, typer.Option(help="The party's node certificate (PEM).")],
    audit_key: Annotated[Path, typer.Option(help="The party's audit public key (PEM).")],
    federation: FederationOpt,
) -> None:
    """Enrol a party (or a renewed certificate of one) in the signed roster."""
    try:
        key = identity.load_audit_public_key(audit_key)
        new = identity.enrol(federation, name, role, cert.read_bytes(), key)
    except (BundError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"roster version {new.version}: {name} ({role}); publish "
        f"{federation / identity.ROSTER_FILE} to every node"
    )


@roster_app.command("remove")
def roster_remove(name: str, federation: FederationOpt) -> None:
    """Remove a party from the signed roster; every node refuses it once it has the new roster."""
    try:
        new = identity.unenrol(federation, name)
    except BundError as exc:
        raise _fail(str(exc)) from None
    console.print(f"roster version {new.version}: {name} removed")


@roster_app.command("show")
def roster_show(federation: FederationOpt) -> None:
    """List the roster's parties, roles, certificates and audit keys (after checking it)."""
    try:
        current = identity.load_roster(
            federation / identity.ROSTER_FILE, federation / identity.CA_CERT
        )
    except BundError as exc:
        raise _fail(str(exc)) from None
    t = _table(title=f"roster of {current.federation}, version {current.version}")
    for heading in ("party", "role", "certificates (sha256)", "audit key"):
        t.add_column(heading)
    for m in sorted(current.members.values(), key=lambda m: m.name):
        t.add_row(m.name, m.role, "\n".join(sorted(m.certificates)), m.audit_key.hex())
    console.print(t)


@federation_app.command("revoke")
def federation_revoke(
    target: Annotated[str, typer.Argument(help="A certificate file, or its serial number (hex).")],
    reason: Annotated[str, typer.Option(help="Why; recorded in the signed list.")],
    federation: FederationOpt,
) -> None:
    """Revoke a party's certificate: its peers refuse it as soon as they load the new list."""
    try:
        entry = identity.revoke(federation, target, reason)
    except BundError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"revoked serial {entry.serial} {escape(entry.subject)}; publish "
        f"{federation / identity.REVOCATIONS_FILE} to every node and the regulator"
    )


@operator_app.command("issue")
def operator_issue(
    name: Annotated[str, typer.Argument(help="The operator's (or approver's) name.")],
    party: Annotated[Path, typer.Option(help="The party's directory, with operator_ca.key.")],
    out: Annotated[Path, typer.Option(help="Where to write the credential and operator.toml.")],
    node: Annotated[
        str | None, typer.Option(help="HOST:PORT of the party's node, for operator.toml.")
    ] = None,
    valid_days: Annotated[int, typer.Option(min=1, help="How long it is valid.")] = 365,
) -> None:
    """Issue an operator credential from the party's operator CA, with an operator.toml."""
    from bund.parties.config import operator_template

    try:
        cert = identity.issue_operator(party, name, out, valid_days)
        owner = identity.certificate_facts(cert.read_bytes()).organisation
    except BundError as exc:
        raise _fail(str(exc)) from None
    target = out / "operator.toml"
    if not target.exists():
        target.write_text(operator_template(owner, node or "<HOST:PORT>", None), encoding="utf-8")
    console.print(
        f"operator [bold]{name}[/] of {owner}: credential in {out}; an approver adds "
        f"approver_key to {target}"
    )


@operator_app.command("revoke")
def operator_revoke(
    target: Annotated[str, typer.Argument(help="A credential file, or its serial number (hex).")],
    reason: Annotated[str, typer.Option(help="Why; recorded in the signed list.")],
    party: Annotated[Path, typer.Option(help="The party's directory, with operator_ca.key.")],
) -> None:
    """Revoke an operator credential: the node refuses it as soon as it loads the new list."""
    try:
        entry = identity.revoke(party, target, reason, operators=True)
    except BundError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"revoked operator serial {entry.serial}; copy "
        f"{party / identity.OPERATOR_REVOCATIONS_FILE} to the node"
    )


@party_app.command("init")
def party_init(
    name: Annotated[str, typer.Argument(help="Party name, e.g. bank.")],
    role: Annotated[str, typer.Option(help="|".join(ROLES))],
    federation: Annotated[Path, typer.Option(help="The federation CA directory.")],
    out: Annotated[Path, typer.Option(help="The party's directory.")],
    listen: Annotated[
        str, typer.Option(help="Where the node serves, HOST:PORT (port 0: the OS picks one).")
    ] = "127.0.0.1:0",
) -> None:
    """Issue a party's certificate and keys; write a commented node.toml and policy.toml.

    The two files run as written (``bund serve --config OUT/node.toml``); each of them is kept
    if it exists already. The party's operator CA and a first operator credential
    (``OUT/operator``, with its ``operator.toml``) come with them, and the party is enrolled in
    the federation's roster. A regulator gets no node files: it writes ``regulator.toml``.
    """
    from bund.parties.config import node_template, operator_template
    from bund.parties.policy import policy_template
    from bund.parties.schema import listen_address

    try:
        listen_address(listen)
    except ValueError as exc:
        raise _fail(f"--listen {exc}") from None
    try:
        identity.create_party(federation, name, role, out)
    except BundError as exc:
        raise _fail(str(exc)) from None
    console.print(f"party [bold]{name}[/] ({role}): keys and certificate in {out}")
    if role == "regulator":
        return
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):  # noqa: S104 - a wildcard listen is reached on loopback
        host = "127.0.0.1"
    operator = (
        operator_template(name, None, "../state/port")
        if port == "0"
        else operator_template(name, f"{host}:{port}", None)
    )
    for file, text in (
        ("node.toml", node_template(name, listen)),
        ("policy.toml", policy_template(name)),
        (f"{identity.OPERATOR_DIR}/operator.toml", operator),
    ):
        target = out / file
        if target.exists():
            console.print(f"kept the existing {target}")
            continue
        target.write_text(text, encoding="utf-8")
        console.print(f"wrote {target}")
    console.print(
        f"check: bund config check {out / 'node.toml'}; run: bund serve -c {out / 'node.toml'}"
    )


# -- the node ------------------------------------------------------------------------------


@app.command()
def serve(
    config: ConfigOpt,
    log_level: Annotated[
        str | None,
        typer.Option(help="DEBUG | INFO | WARNING | ERROR (default: [logging] level)."),
    ] = None,
) -> None:
    """Run this party's node until SIGTERM/SIGINT; SIGHUP reloads its policy."""
    import dataclasses

    from bund.parties.config import LogLevel
    from bund.parties.node import serve as run

    cfg = _config(config)
    if log_level is not None:
        level = log_level.upper()
        if level not in get_args(LogLevel):
            raise _fail(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {log_level!r}")
        logs = dataclasses.replace(cfg.logging, level=cast("LogLevel", level))
        cfg = dataclasses.replace(cfg, logging=logs)
    try:
        run(cfg)
    except BundError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # a key or certificate file the node cannot read
        raise _fail(f"{exc.filename or 'the node'}: {exc.strerror or exc}") from None


# -- jobs ----------------------------------------------------------------------------------


def load_spec(path: Path, requester: str) -> "JobSpec":
    """Read a job spec TOML file; the requester is this node's party.

    The file is parsed by its declared schema and checked by its protocol before anything is
    sent; an error names the file and the key to fix, and exits 1.
    """
    from bund.parties.specfile import load_spec_file

    try:
        return load_spec_file(path, requester)
    except BundError as exc:
        raise _fail(str(exc)) from None


@job_app.command("init")
def job_init(
    protocol: Annotated[str, typer.Argument(help="The protocol, e.g. psi.")],
    out: Annotated[
        Path | None, typer.Option(help="Write the template here (default: print it).")
    ] = None,
) -> None:
    """Write a commented job spec template: every parameter (type, range, default) and role."""
    from bund.parties.protocols import get_protocol
    from bund.parties.specfile import spec_template

    try:
        definition = get_protocol(protocol)
    except BundError as exc:
        raise _fail(str(exc)) from None
    text = spec_template(definition)
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.exists():
        raise _fail(f"{out} exists already: choose another --out, or remove it first")
    out.write_text(text, encoding="utf-8")
    console.print(f'wrote {out}: fill in every "<...>", then `bund config check {out}`')


def wait_for(client: "NodeClient", job_id: str, timeout: float = 3600.0) -> "JobStatus":
    """Follow a job with a progress bar until it is terminal.

    An interrupted job is followed on (its node resumes it once its peers answer); the user is
    told so, with the command that stops it instead.

    Raises:
        FollowTimeoutError: If the job is still going after ``timeout`` seconds.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bund.parties.follow import follow_job
    from bund.parties.lifecycle.states import JobState

    with Progress(
        TextColumn("[bold]{task.fields[state]}[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=None, state="proposed", count="")

        def show(status: "JobStatus") -> None:
            progress.update(
                task,
                description=status.phase,
                completed=status.done,
                total=status.total or None,
                state=status.state.value,
                count=f"{status.done:,}/{status.total:,}" if status.total else "",
            )
            if status.state is JobState.INTERRUPTED:
                progress.console.print(
                    f"[yellow]interrupted[/]: {escape(status.error)}; the node resumes the job "
                    f"when its peers answer (or stop it: bund job cancel {job_id})"
                )

        # The operator's own node knows the job it is asked about, or the id is wrong. A standing
        # contract is followed until it serves (it ends only when revoked or by its terms).
        return follow_job(
            client,
            job_id,
            timeout=timeout,
            on_update=show,
            not_found_grace=0,
            until=lambda status: status.state is JobState.SERVING,
        )


def approval_lines(status: "JobStatus") -> list[str]:
    """Each party's answer: this node's approvers, and (at the requester) the others' answers."""
    from bund.parties.lifecycle.states import JobState

    lines = []
    if status.approved_by:
        lines.append(f"approved here by {', '.join(status.approved_by)}")
    for view in status.parties:
        line = f"{view.party}: {view.state.value.replace('_', ' ')}"
        if view.approved_by:
            line += f", approved by {', '.join(view.approved_by)}"
        if view.reason and view.state in (JobState.REFUSED, JobState.FAILED):
            line += f" ({view.reason})"
        lines.append(line)
    return lines


def print_status(status: "JobStatus") -> None:
    """A job's status as a small table."""
    from bund.parties.lifecycle.states import JobState

    t = _table(show_header=False, box=None)
    colour = {
        "succeeded": "green",
        "failed": "red",
        "refused": "red",
        "aborted": "yellow",
        "interrupted": "yellow",
        "serving": "green",
    }.get(status.state.value, "cyan")
    t.add_row("job", status.spec.job_id)
    t.add_row("protocol", status.spec.protocol)
    t.add_row("parties", ", ".join(f"{p.party} ({p.role})" for p in status.spec.participants))
    t.add_row("state", f"[{colour}]{status.state.value}[/]")
    for line in approval_lines(status):
        t.add_row("", escape(line))  # approver names and reasons come from peers: never markup
    if status.phase:
        t.add_row("phase", f"{status.phase} {status.done}/{status.total}")
    if status.error:
        t.add_row("reason", escape(status.error))  # words from a peer: never markup
    if status.state is JobState.INTERRUPTED:
        t.add_row("next", f"bund job resume {status.spec.job_id} (or bund job cancel)")
    if status.state is JobState.SERVING:
        t.add_row("next", f"bund score {status.spec.job_id} (revoke: bund job cancel)")
    t.add_row("result to", ", ".join(status.spec.receivers))
    if status.transcript_digest:
        t.add_row("transcript", status.transcript_digest)
    console.print(t)


@job_app.command("submit")
def job_submit(
    spec: Annotated[Path, typer.Argument(help="Job spec TOML.")],
    config: OperatorOpt,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
) -> None:
    """Submit a job to this party's node; the node proposes it to the other participants."""
    from bund.parties.lifecycle.states import JobState

    cfg, _ = _operator(config)
    job = load_spec(spec, cfg.party)
    try:
        with _client(cfg) as client:
            job_id = client.submit(job)
            console.print(f"submitted job [bold]{job_id}[/]")
            if wait:
                status = wait_for(client, job_id)
                print_status(status)
                if status.state not in (JobState.SUCCEEDED, JobState.SERVING):
                    raise typer.Exit(1)
                if status.has_result:
                    _print_result(client.result_info(job_id))
    except BundError as exc:
        raise _fail(str(exc)) from None


@job_app.command("status")
def job_status(
    job_id: str,
    config: OperatorOpt,
    watch: Annotated[bool, typer.Option(help="Follow until the job ends.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show a job's status at this party's node."""
    from bund.parties.follow import follow_job
    from bund.parties.views import status_document

    cfg, _ = _operator(config)
    try:
        with _client(cfg) as client:
            if not json_out:
                print_status(wait_for(client, job_id) if watch else client.status(job_id))
                return
            status = (
                follow_job(client, job_id, timeout=3600.0, not_found_grace=0)
                if watch
                else client.status(job_id)
            )
    except BundError as exc:
        raise _fail(str(exc)) from None
    _print_json(status_document(status))


def _print_result(result: "ResultInfo") -> None:
    from bund.parties.views import shown_value as _shown

    t = _table(title="result", show_header=False)
    for k, v in result.summary.items():
        t.add_row(escape(k), escape(_shown(k, v)))
    for name, size in result.artifact_sizes.items():
        t.add_row(escape(f"artifact {name}"), f"{size:,} bytes")
    console.print(t)


def _download(client: "NodeClient", job_id: str, name: str, size: int, target: Path) -> None:
    """Write one artifact to ``target`` page by page (a temporary file, renamed when whole)."""
    temporary = target.with_name(f".{target.name}.part")
    try:
        with temporary.open("wb") as f:
            for page in client.artifact_pages(job_id, name, size):
                f.write(page)
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


@job_app.command("result")
def job_result(
    job_id: str,
    config: OperatorOpt,
    out: Annotated[
        Path | None, typer.Option(help="Write the artifacts into this directory.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show (and optionally save) a job's result held at this party's node."""
    cfg, _ = _operator(config)
    written: dict[str, Path] = {}
    try:
        with _client(cfg) as client:
            result = client.result_info(job_id)
            if not json_out:
                _print_result(result)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                for name, size in result.artifact_sizes.items():
                    target = out / Path(name).name
                    _download(client, job_id, name, size, target)
                    written[name] = target
                    if not json_out:
                        console.print(f"wrote {target}")
    except BundError as exc:
        raise _fail(str(exc)) from None
    if json_out:
        from bund.parties.views import result_document

        _print_json(result_document(job_id, result, written))


@job_app.command("approve")
def job_approve(
    job_id: str,
    config: OperatorOpt,
    key: Annotated[
        Path | None,
        typer.Option(
            help="The approver's Ed25519 key (default: operator.toml's approver_key, or beside "
            "node.toml)."
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Approve without asking.")] = False,
) -> None:
    """Show what a job will compute and reveal, then sign this node's approval of it.

    The approver's key signs here, on the machine where it lives; only the signature goes to the
    node, over the operator credential's connection.
    """
    from bund.parties.approvals import sign_approval

    cfg, _ = _operator(config)
    key_path = key or cfg.approver_key
    if key_path is None:
        raise _fail(f"no approver key: pass --key, or set approver_key in {config}")
    try:
        with _client(cfg) as client:
            request = client.approval_request(job_id)
            console.print("\n".join(request.summary_lines()), markup=False, highlight=False)
            if not yes:
                typer.confirm("Approve this job?", abort=True)
            client.approve(job_id, sign_approval(request, key_path))
    except BundError as exc:
        raise _fail(str(exc)) from None
    console.print(f"[green]approved[/] job {job_id}")


@job_app.command("deny")
def job_deny(
    job_id: str,
    config: OperatorOpt,
    reason: Annotated[str, typer.Option(help="Why; the requester sees it.")],
) -> None:
    """Refuse a job at this node; the requester's job ends refused with the reason."""
    cfg, _ = _operator(config)
    try:
        with _client(cfg) as client:
            client.deny(job_id, reason)
    except BundError as exc:
        raise _fail(str(exc)) from None
    console.print(f"denied job {job_id}")


@job_app.command("cancel")
def job_cancel(
    job_id: str,
    config: OperatorOpt,
    reason: Annotated[str, typer.Option(help="Why; every participant's log records it.")] = "",
) -> None:
    """Cancel a job: stop its work at this node and at every other participant."""
    cfg, _ = _operator(config)
    try:
        with _client(cfg) as client:
            client.cancel(job_id, reason)
    except BundError as exc:
        raise _fail(str(exc)) from None
    console.print(f"cancelled job {job_id}")


@job_app.command("resume")
def job_resume(
    job_id: str,
    config: OperatorOpt,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
) -> None:
    """Resume an interrupted job from its resume states, here and at every other participant."""
    cfg, _ = _operator(config)
    try:
        with _client(cfg) as client:
            client.resume(job_id)
            console.print(f"resumed job {job_id}")
            print_status(wait_for(client, job_id) if wait else client.status(job_id))
    except BundError as exc:
        raise _fail(str(exc)) from None


@job_app.command("list")
def job_list(config: OperatorOpt, limit: int = 20, json_out: JsonOpt = False) -> None:
    """List the newest jobs at this party's node."""
    cfg, _ = _operator(config)
    try:
        with _client(cfg) as client:
            jobs = client.list_jobs(limit)
    except BundError as exc:
        raise _fail(str(exc)) from None
    if json_out:
        from bund.parties.views import list_document

        _print_json(list_document(jobs))
        return
    t = _table()
    t.add_column("job", no_wrap=True, min_width=32)  # whole, so it can be copied
    for heading in ("protocol", "parties", "state", "updated"):
        t.add_column(heading)
    for s in jobs:
        t.add_row(
            s.spec.job_id, s.spec.protocol, ",".join(s.spec.parties), s.state.value, s.updated_at
        )
    console.print(t)


@job_app.command("pending")
def job_pending(config: OperatorOpt, limit: int = 50, json_out: JsonOpt = False) -> None:
    """List the jobs that await this party's approval, each with what it computes and reveals."""
    from bund.parties.lifecycle.states import JobState

    cfg, _ = _operator(config)
    try:
        with _client(cfg) as client:
            jobs = client.list_jobs(limit, states=(JobState.AWAITING_APPROVAL,))
            requests = [(s, client.approval_request(s.spec.job_id)) for s in jobs]
    except BundError as exc:
        raise _fail(str(exc)) from None
    if json_out:
        from bund.parties.views import pending_document

        _print_json(pending_document(requests))
        return
    if not requests:
        console.print("no job awaits this party's approval")
        return
    for status, request in requests:
        console.rule(f"job {status.spec.job_id}", characters="-")
        console.print("\n".join(request.summary_lines()), markup=False, highlight=False)
        approved = (
            f"; approved so far by {', '.join(status.approved_by)}" if status.approved_by else ""
        )
        console.print(
            f"bund job approve {status.spec.job_id} (or bund job deny){approved}",
            markup=False,
            highlight=False,
        )


@job_app.command("logs")
def job_logs(
    job_id: str,
    config: OperatorOpt,
    all_records: Annotated[
        bool, typer.Option("--all", help="Show each message's record too (sent, received).")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per record (keys: docs/deploy.md).")
    ] = False,
) -> None:
    """A job's life at this party's node, one line per record of the node's signed audit log.

    Submitted or proposed, admitted, approved, started, budget, closed, with each record's
    time and fields; message records are counted unless --all shows them. bund audit verify
    checks the signatures of the whole log.
    """
    from bund.parties.views import dumps, is_message_record, record_document, record_line

    cfg, _ = _operator(config)
    try:
        with _client(cfg) as client:
            records = client.job_log(job_id)
    except BundError as exc:
        raise _fail(str(exc)) from None
    shown = [r for r in records if all_records or not is_message_record(r)]
    for record in shown:
        typer.echo(dumps(record_document(record)) if json_out else record_line(record))
    hidden = len(records) - len(shown)
    if hidden and not json_out:
        err_console.print(f"{hidden} message records not shown (--all shows them)")


budget_app = _group("Privacy budgets per dataset.")
app.add_typer(budget_app, name="budget")


@budget_app.command("show")
def budget_show(config: ConfigOpt, json_out: JsonOpt = False) -> None:
    """Each dataset's privacy budget: total, spent, reserved, left (``--json``: exact)."""
    from fractions import Fraction

    from bund.compute.dp.budget import format_decimal, format_rational, shown_exactly
    from bund.parties.ledger import BudgetLedger

    cfg = _config(config)

    class _NoAudit:
        def append(self, event: str, job_id: str = "", fields: object = None) -> None:
            raise RuntimeError("budget show never charges")

    ledger = BudgetLedger(
        cfg.state_dir / "budget.db",
        {n: e.budget_limits for n, e in cfg.policy.datasets.items()},
        _NoAudit(),
    )
    try:
        lines = ledger.lines()
    finally:
        ledger.close()
    if json_out:
        from bund.parties.views import budget_document

        levels = {name: entry.level for name, entry in cfg.policy.datasets.items()}
        _print_json(budget_document(lines, levels))
        return
    exact: dict[str, str] = {}

    def cell(value: Fraction) -> str:
        """A decimal that fits the table; one rounded up is starred and its exact value noted."""
        shown = format_decimal(value)
        if shown_exactly(value):
            return shown
        exact[shown] = format_rational(value)
        return f"{shown}*"

    t = _table(title="privacy budget per dataset")
    for heading in ("dataset", "level", "", "total", "spent", "reserved", "left"):
        t.add_column(heading, no_wrap=True)
    for line in lines:
        entry = cfg.policy.datasets.get(line.dataset)
        budgets = (line.total, line.spent, line.reserved, line.remaining)
        t.add_row(
            line.dataset, entry.level if entry else "?", "ε", *(cell(b.epsilon) for b in budgets)
        )
        t.add_row("", "", "δ", *(cell(b.delta) for b in budgets))
    if exact:
        notes = ", ".join(f"{shown} is {value}" for shown, value in exact.items())
        t.caption = f"* rounded up; exactly: {notes}"
    console.print(t)


# -- audit ---------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Verify this node's own log: node.toml (on its host), or operator.toml (pulls "
            "the log with the operator credential; give --key).",
        ),
    ] = None,
    log_file: Annotated[
        Path | None, typer.Option("--log", help="An audit.db or exported .jsonl file.")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="The party's audit public key (PEM).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a log's hash chain and signatures; name the first bad record."""
    from bund.parties.audit import iter_jsonl, open_audit_store, verify_records, verify_store

    store_name: str | None = str(log_file) if log_file is not None else None
    if config is not None and log_file is None and _is_operator_file(config):
        _verify_remote(_operator(config)[0], key, json_out)
        return
    if config is not None:
        cfg = _config(config)
        store_name = store_name or cfg.audit_store
        key = key or cfg.audit_pub
    if store_name is None or key is None:
        raise _fail("give --config, or both --log and --key")
    is_url = "://" in store_name
    if not is_url and not Path(store_name).exists():
        raise _fail(f"{store_name} not found")
    shown = store_name.split("@")[-1] if is_url else store_name  # never print a password
    try:
        public_key = identity.load_audit_public_key(key)
        if store_name.endswith(".jsonl"):
            # A line that cannot even be decoded is reported as the first bad record.
            with Path(store_name).open("rb") as fp:
                report = verify_records(iter_jsonl(fp), public_key)
        else:
            with open_audit_store(store_name, read_only=True) as store:
                report = verify_store(store, public_key)
    except (BundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _show_verification(report, "", shown, json_out)


def _show_verification(
    report: "VerificationReport | None", error: str, shown: str, json_out: bool
) -> None:
    """Print a verification's outcome; exit 1 unless the log verified."""
    if json_out:
        from bund.parties.views import verify_document

        _print_json(verify_document(report, shown, error))
        if report is None or not report.ok:
            raise typer.Exit(1)
        return
    if report is not None and report.ok:
        console.print(
            f"[green]OK[/]: {report.count} records, chain and signatures verify ({shown})"
        )
        return
    why = error if report is None else f"record {report.first_bad_index}: {report.reason}"
    raise _fail(f"{why} ({shown})")


def _verify_remote(config: "OperatorConfig", key: Path | None, json_out: bool) -> None:
    """Pull the party's log from its node with the operator credential, and verify it."""
    from bund.parties.regulator import pull_log

    if key is None:
        raise _fail("give --key: the party's audit public key, as you hold it (not the node's)")
    try:
        public_key = identity.load_audit_public_key(key)
        with _client(config) as client:
            pulled = pull_log(client, public_key)
    except BundError as exc:
        raise _fail(str(exc)) from None
    _show_verification(pulled.verification, pulled.error, f"{config.party}'s node", json_out)


@audit_app.command("report")
def audit_report(
    config: Annotated[Path, typer.Option("--config", "-c", help="The regulator's regulator.toml.")],
    out: Annotated[Path, typer.Option(help="The HTML report to write.")] = Path("report.html"),
) -> None:
    """Pull, verify and reconcile every party's audit log; write a self-contained HTML report."""
    from bund.parties.regulator import report_command

    raise typer.Exit(report_command(config, out))


@audit_app.command("export")
def audit_export(
    config: ConfigOpt, out: Annotated[Path, typer.Option(help="JSON-lines file.")]
) -> None:
    """Export this node's signed audit log as JSON lines (for a regulator)."""
    from bund.parties.audit import export_jsonl, open_audit_store

    cfg = _config(config)
    with open_audit_store(cfg.audit_store, read_only=True) as store:
        records = store.read()
    with out.open("w", encoding="utf-8") as fp:
        export_jsonl(records, fp)
    console.print(f"exported {len(records)} records to {out}")


# -- the web console -------------------------------------------------------------------------


@app.command("console")
def console_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="A party's operator.toml (an operator credential), or node.toml on its host.",
        ),
    ] = None,
    regulator: Annotated[
        Path | None, typer.Option(help="A regulator's regulator.toml: audit the federation.")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Where to listen (loopback unless told).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: the OS picks one).")] = 8470,
    approver_key: Annotated[
        Path | None,
        typer.Option(help="The approver's Ed25519 key on this machine (default: the config's)."),
    ] = None,
    audit_key: Annotated[
        Path | None,
        typer.Option(
            help="The party's audit public key (default: node.toml's; needed with operator.toml)."
        ),
    ] = None,
    shared: Annotated[
        bool, typer.Option("--shared", help="Several people use it: hold no approver key.")
    ] = False,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Listen off loopback (needs the TLS options).")
    ] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="The console's TLS certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    client_ca: Annotated[
        Path | None,
        typer.Option(help="CA of the client certificates that log in: the party's operator CA."),
    ] = None,
) -> None:
    """Serve a local web console: jobs, approvals, budgets and the audit log, or a regulator's.

    It talks to the node over the same mTLS client API as these commands, with the same
    credential; an approver's key signs on this machine and is never sent anywhere.
    """
    try:
        from bund.parties.console.server import approver_key_of, make_server
    except ModuleNotFoundError as exc:
        raise _fail(
            f"the console needs its web packages ({exc.name}): pip install 'bund[console]'"
        ) from None
    from bund.parties.console.app import PartyAccess, RegulatorAccess
    from bund.parties.console.security import Listen

    if (config is None) == (regulator is None):
        raise _fail("give --config (a party's console) or --regulator (a regulator's)")
    listen = Listen(host, port, tls_cert, tls_key, client_ca)
    client = None
    try:
        if regulator is not None:
            from bund.parties.regulator import audit_federation, load_regulator_config

            reg = RegulatorAccess(load_regulator_config(regulator), audit_federation)
            server = make_server(listen, allow_remote, regulator=reg)
        else:
            assert config is not None
            cfg, node_cfg = _operator(config)
            key_path = audit_key or (node_cfg.audit_pub if node_cfg is not None else None)
            if key_path is None:
                raise _fail(
                    "give --audit-key: the party's audit public key, as you hold it (not the "
                    "node's word); it verifies the log the console shows"
                )
            signer = approver_key_of(approver_key, cfg.approver_key, shared)
            client = _client(cfg)
            party = PartyAccess(client, identity.load_audit_public_key(key_path), signer)
            server = make_server(listen, allow_remote, party=party)
    except (BundError, OSError) as exc:
        if client is not None:
            client.close()
        raise _fail(str(exc)) from None
    console.print(f"bund console at {server.url}  (Ctrl-C stops it)", markup=False)
    try:
        server.run()
    finally:
        if client is not None:
            client.close()


# -- configuration files ---------------------------------------------------------------------

config_app = _group("Check the files people write.")
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    files: Annotated[list[Path], typer.Argument(help="Files to check.")],
    kind: Annotated[
        str | None,
        typer.Option(
            help="node | policy | spec | workflow | regulator | operator (default: from the file)."
        ),
    ] = None,
    party: Annotated[
        str | None,
        typer.Option(help="Whose file it is: a policy's owner, a spec's or workflow's requester."),
    ] = None,
) -> None:
    """Validate node.toml, policy.toml, job specs, workflows or regulator.toml; start nothing.

    Prints "ok" for each valid file and exits 0; prints every error (file, key, fix) and
    exits 1 otherwise.
    """
    from bund.parties.filecheck import KINDS, check_file

    if kind is not None and kind not in KINDS:
        raise _fail(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    failed = False
    for path in files:
        result = check_file(path, kind, party)
        if result.ok:
            console.print(f"{escape(str(path))}: [green]ok[/] ({result.kind})", soft_wrap=True)
            continue
        failed = True
        for line in result.errors:
            err_console.print(escape(line), highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


# -- data, benchmarks, demo ------------------------------------------------------------------


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Output directory.")],
    scale: Annotated[int, typer.Option(min=1, help="Multiple of the shipped demo size.")] = 1,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 20261124,
) -> None:
    """Write the demo datasets (finance and health) at any scale."""
    from bund.parties.demo_data import write_demo_data

    for path in write_demo_data(out, scale=scale, seed=seed):
        console.print(str(path))


@app.command()
def bench(
    kernel: Annotated[
        str,
        typer.Argument(help="a family (paillier, ou, ckks, psi, fed, job, ...), baselines, all"),
    ],
    quick: Annotated[bool, typer.Option(help="Small sizes, to check the harness.")] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON.")
    ] = None,
    plots: Annotated[
        Path | None,
        typer.Option(help="Where the PNGs go (default: beside --json, else ./bench-plots)."),
    ] = None,
) -> None:
    """Benchmark the crypto kernels (from a source checkout: the benchmarks are not installed).

    Writes a PNG per family and baselines.png: each kernel against its library baseline.
    """
    try:
        from benchmarks.suite import main
    except ModuleNotFoundError:
        raise typer.BadParameter(
            "the benchmarks ship with the source, not the package: run `bund bench` from a clone "
            "of the repository (after `bash scripts/setup.sh`)"
        ) from None
    plot_dir = plots or (json_path.parent if json_path is not None else Path("bench-plots"))
    try:
        main(kernel, quick, json_path, plot_dir)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    console.print(f"plots in {plot_dir}/")


@app.command()
def demo(
    workdir: Annotated[Path | None, typer.Option(help="Keep the demo's files here.")] = None,
) -> None:
    """The demo: a finance and a health scenario of node processes on loopback.

    Bank, tax bureau and registry (PSI, credit model); three hospitals and an insurer (DP
    statistics, CKKS scoring, federated DP-SGD).
    """
    from bund.parties.demo import run_demo

    try:
        run_demo(workdir, console)
    except BundError as exc:
        raise _fail(str(exc)) from None


# -- workflows -------------------------------------------------------------------------------

workflow_app = _group("Chains of jobs, one after the other.")
app.add_typer(workflow_app, name="workflow")


@workflow_app.command("run")
def workflow_run(
    name: Annotated[str, typer.Argument(help="The workflow: credit-model.")],
    config: OperatorOpt,
    spec: Annotated[Path, typer.Option("--spec", help="The workflow file (TOML).")],
    out: Annotated[
        Path | None, typer.Option(help="Write each step's result into out/<step>/.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Longest wait for one step, in seconds.")] = 86400,
) -> None:
    """Run a workflow's jobs at this party's node in order; stop at the first that fails."""
    from bund.parties.client import PeerClients
    from bund.parties.workflow import run_workflow

    cfg, node_cfg = _operator(config)
    # On the node's host, see each step succeed at every participant too (a status read with
    # the node's certificate); from an operator's workstation, at this party's node.
    peers = PeerClients(node_cfg) if node_cfg is not None else None
    try:
        with _client(cfg) as client:
            run_workflow(name, spec, client, console, out=out, step_timeout=timeout, peers=peers)
    except BundError as exc:
        raise _fail(str(exc)) from None
    finally:
        if peers is not None:
            peers.close()


# -- real-time scoring under a standing contract --------------------------------------------


@app.command()
def score(
    contract: Annotated[str, typer.Argument(help="The serving contract (its job id).")],
    config: OperatorOpt,
    applicants: Annotated[
        Path,
        typer.Option(
            help="CSV: the applicant's id and the bank's own feature values, by the model's "
            "feature names ('-': standard input)."
        ),
    ],
    id_column: Annotated[str, typer.Option(help="The applicants' id column.")] = "id",
    out: Annotated[Path | None, typer.Option(help="Write the decisions as CSV here.")] = None,
) -> None:
    """Score applicants now, under an approved serving contract, at the bank's own node.

    Prints each decision (approve, decline, or refer when some provider lacks the firm) and the
    request's digest, which each party recorded and a regulator can check
    (`bund audit request`).
    """
    import sys

    from bund.parties.serving.csvio import decisions_csv, read_applicants

    cfg, _ = _operator(config)
    text = sys.stdin.read() if str(applicants) == "-" else applicants.read_text(encoding="utf-8")
    try:
        asked = read_applicants(text, id_column)
        with _client(cfg) as client:
            scored = client.score(contract, asked)
    except BundError as exc:
        raise _fail(str(exc)) from None
    t = _table()
    for heading in ("id", "decision", "probability"):
        t.add_column(heading)
    for d in scored.decisions:
        p = "" if d.probability is None else f"{d.probability:.6f}"
        t.add_row(escape(d.id), d.decision, p)
    console.print(t)
    console.print(f"request sha256 {scored.request_sha256.hex()} (nonce {scored.nonce.hex()})")
    if out is not None:
        out.write_text(decisions_csv(scored), encoding="utf-8")
        console.print(f"wrote {out}")


@audit_app.command("request")
def audit_request(
    contract: Annotated[str, typer.Argument(help="The serving contract (its job id).")],
    digest: Annotated[str, typer.Argument(help="The request's sha256, as the bank printed it.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="The regulator's regulator.toml.")],
    party: Annotated[str, typer.Option(help="Whose record of the request to check.")],
) -> None:
    """Check that a party recorded a request, under a Merkle root it signed (regulator).

    The party's node serves the root record and the request's audit path; both are checked here
    with the party's audit key from regulator.toml, never the node's word.
    """
    from bund.parties.client import NodeClient
    from bund.parties.regulator import load_regulator_config
    from bund.parties.serving.proofs import verify_request_proof

    try:
        regulator = load_regulator_config(config)
        audited = regulator.parties.get(party)
        if audited is None:
            raise _fail(f"{config} names no party {party!r} (known: {sorted(regulator.parties)})")
        request = bytes.fromhex(digest)
        with NodeClient(audited.address, party, regulator.tls, timeout=regulator.timeout_s) as c:
            proof = c.prove_request(contract, request)
        record = verify_request_proof(proof, request, party, audited.audit_public_key)
    except ValueError:
        raise _fail("the digest must be 64 hex digits") from None
    except BundError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"[green]OK[/]: {party} recorded request {proof.seq} of contract {contract} under the "
        f"root of its record {record.index} ({record.timestamp}), signed with its audit key"
    )


if __name__ == "__main__":
    app()
