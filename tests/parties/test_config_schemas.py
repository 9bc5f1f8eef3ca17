"""Every file a person writes, and every protocol's parameters, parsed by one declared schema."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

from bund.compute import ckks
from bund.compute.dp.stats import QueryKind
from bund.compute.errors import BundError
from bund.parties import demo
from bund.parties.cli import app
from bund.parties.config import NodeFile, load_config, node_template
from bund.parties.errors import ConfigError
from bund.parties.filecheck import check_file, detect_kind
from bund.parties.jobs import (
    InvalidJobSpecError,
    JobSpec,
    Participant,
    ProtocolDef,
    ProtocolParams,
    Result,
    RoleRequirement,
)
from bund.parties.policy import (
    DEFAULT_LIMITS,
    LEVELS,
    Level,
    PolicyFile,
    PolicyFileError,
    load_policy,
    policy_template,
)
from bund.parties.processes import write_node_files
from bund.parties.protocols import PROTOCOLS, ckks_scoring, dp_stats, psi
from bund.parties.regulator import load_regulator_config
from bund.parties.schema import MAX_DEPTH, StrictModel
from bund.parties.specfile import load_spec_file
from bund.parties.workflow import WorkflowSpecError, load_credit_workflow
from tests.conftest import Federation

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "credit"

POLICY = """\
cohort_floor = 5
[approvals]
required = false
[counterparties.tax]
roles = ["tax"]
[datasets.loans]
level = "confidential"
protocols = ["psi"]
budget_epsilon = "1"
"""

NODE = """\
party = "bank"
listen = "127.0.0.1:0"
state_dir = "state"
[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key"
[limits]
recv_timeout_s = 30
[compute]
executor = "inline"
[peers.tax]
address = "127.0.0.1:7443"
[datasets.loans]
kind = "csv"
path = "loans.csv"
"""

SPEC = """\
protocol = "psi"
purpose = "Align the loan book with tax filings"
receivers = ["bank"]

[params]
mode = "cardinality"

[[participants]]
party = "bank"
role = "member"
dataset = "loans"
columns = { id = "company_id" }

[[participants]]
party = "tax"
role = "member"
dataset = "filings"
columns = { id = "uscc" }
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    write(tmp_path, "policy.toml", POLICY)
    write(tmp_path, "node.toml", NODE)
    return tmp_path


# --- node.toml ---------------------------------------------------------------------------------


def test_a_valid_node_file_loads_as_before(node_dir: Path) -> None:
    config = load_config(node_dir / "node.toml")
    assert config.party == "bank" and config.listen == "127.0.0.1:0"
    assert config.recv_timeout_s == 30.0 and config.approval_timeout_s == 86_400.0
    assert config.max_message_bytes == 8 << 20 and config.max_workers == 16
    assert config.peers == {"tax": "127.0.0.1:7443"}
    assert config.datasets["loans"].path == node_dir / "loans.csv"
    assert config.tls.cert == node_dir / "node.pem"
    assert config.audit_store == str(node_dir / "state" / "audit.db")
    assert config.policy.datasets["loans"].owner == "bank"


def test_witnessing_is_configured_under_audit(node_dir: Path) -> None:
    config = load_config(node_dir / "node.toml")
    assert config.witness_interval_s == 300.0 and config.regulator is None
    assert config.witness_parties() == {"tax"}
    peers_file = write(node_dir, "peers.toml", '[insurer]\naddress = "127.0.0.1:1"\n')
    text = (
        NODE.replace('state_dir = "state"\n', 'state_dir = "state"\npeers_file = "peers.toml"\n')
        + '[audit]\nwitness_interval_s = 0.5\nregulator = "regulator"\n'
    )
    config = load_config(write(node_dir, "node.toml", text))
    assert config.peers_file == peers_file and config.witness_interval_s == 0.5
    assert config.witness_parties() == {"tax", "insurer", "regulator"}
    for wrong, words in (("0", "must be a positive"), ('"soon"', "must be a positive")):
        bad = text.replace("witness_interval_s = 0.5", f"witness_interval_s = {wrong}")
        with pytest.raises(ConfigError, match=f"audit.witness_interval_s {words}"):
            load_config(write(node_dir, "node.toml", bad))


@pytest.mark.parametrize(
    ("change", "key", "suggestion"),
    [
        (("listen =", "listne ="), "listne", "listen"),
        (('executor = "inline"', 'executer = "inline"'), "compute.executer", "compute.executor"),
        (("state_dir =", "statedir ="), "statedir", "state_dir"),
        (('cert = "node.pem"', 'certificate = "node.pem"'), "tls.certificate", "tls.cert"),
        (("recv_timeout_s", "recv_timout_s"), "limits.recv_timout_s", "limits.recv_timeout_s"),
        (("address =", "adress ="), "peers.tax.adress", "peers.tax.address"),
    ],
)
def test_typoed_node_keys_are_refused_naming_file_key_and_nearest_key(
    node_dir: Path, change: tuple[str, str], key: str, suggestion: str
) -> None:
    path = write(node_dir, "node.toml", NODE.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = [line for line in str(err.value).splitlines() if f": {key}:" in line]
    assert lines, str(err.value)
    assert lines[0].startswith(f"{path}: {key}: unknown ")
    assert f"did you mean {suggestion!r}" in lines[0]


def test_a_key_in_the_wrong_table_is_pointed_to_its_table(node_dir: Path) -> None:
    path = write(node_dir, "node.toml", 'executer = "process:2"\n' + NODE)
    with pytest.raises(ConfigError, match=r"executer: unknown key .*'compute\.executor'"):
        load_config(path)


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:", ":7443", "host:99999", "a b:1"])
def test_listen_must_be_host_and_port(node_dir: Path, listen: str) -> None:
    path = write(node_dir, "node.toml", NODE.replace("127.0.0.1:0", listen))
    with pytest.raises(ConfigError, match=r"listen must be \"HOST:PORT\"") as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: listen")


@pytest.mark.parametrize("listen", ["0.0.0.0:7443", "[::]:0", "node.example:443"])
def test_listen_takes_host_and_port(node_dir: Path, listen: str) -> None:
    path = write(node_dir, "node.toml", NODE.replace("127.0.0.1:0", listen))
    assert load_config(path).listen == listen


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            ("recv_timeout_s = 30", "recv_timeout_s = -1"),
            "limits.recv_timeout_s must be a positive",
        ),
        (("recv_timeout_s = 30", 'max_workers = "4"'), "limits.max_workers must be an integer"),
        (('executor = "inline"', 'executor = "gpu"'), "compute.executor is not an executor"),
        (('"127.0.0.1:7443"', '"127.0.0.1"'), 'peers.tax.address must be "HOST:PORT"'),
        (('kind = "csv"', 'kind = "xls"'), "datasets.loans: kind must be one of"),
        (('party = "bank"', 'party = "bank one"'), "party must be a name"),
        (('party = "bank"\n', ""), "party is missing"),
        (("[tls]", "tls = 1\n[x]"), "tls must be a table"),
        (("", "[policy]\nx = 1\n"), "policy lives in its own file"),
    ],
)
def test_node_values_are_checked(node_dir: Path, change: tuple[str, str], words: str) -> None:
    text = NODE.replace(*change) if change[0] else NODE + change[1]
    path = write(node_dir, "node.toml", text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(path)


def test_every_error_of_a_file_is_reported_on_its_own_line(node_dir: Path) -> None:
    text = NODE.replace("listen =", "listne =").replace("state_dir =", "statedir =")
    path = write(node_dir, "node.toml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}: ") for line in lines)


# --- policy.toml -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (('budget_epsilon = "1"', 'budget_epsilom = "1"'), "'datasets.loans.budget_epsilon'"),
        (('protocols = ["psi"]', 'protocols = ["psl"]'), "did you mean 'psi'"),
        (('level = "confidential"', 'level = "secret"'), "level must be one of"),
        (('roles = ["tax"]', 'roles = ["taxman"]'), "did you mean 'tax'"),
        (('roles = ["tax"]', "roles = []"), "needs roles"),
        (("cohort_floor = 5", "cohort_flor = 5"), "did you mean 'cohort_floor'"),
        (('budget_epsilon = "1"', "budget_epsilon = 0.5"), "written exactly"),
        (("[approvals]", "[approval]"), "did you mean 'approvals'"),
    ],
)
def test_policy_errors_name_file_key_and_fix(
    tmp_path: Path, change: tuple[str, str], words: str
) -> None:
    path = write(tmp_path, "policy.toml", POLICY.replace(*change))
    with pytest.raises(PolicyFileError, match=re.escape(words)) as err:
        load_policy(path, "bank")
    assert str(err.value).startswith(f"{path}: ")


def test_a_policy_checked_alone_skips_the_owner_check(tmp_path: Path) -> None:
    path = write(tmp_path, "policy.toml", POLICY + 'owner = "tax"\n')
    with pytest.raises(PolicyFileError, match="owner is 'tax', but this node is 'bank'"):
        load_policy(path, "bank")
    assert load_policy(path, None).datasets["loans"].owner == "tax"


def test_policy_schema_matches_the_domain_tables() -> None:
    assert get_args(Level) == tuple(LEVELS)
    limits = PolicyFile.model_fields["limits"].annotation
    assert isinstance(limits, type) and issubclass(limits, StrictModel)
    assert set(limits.model_fields) == set(DEFAULT_LIMITS)


# --- job specs, workflows, regulator.toml ------------------------------------------------------


def test_a_valid_spec_file_gives_the_same_spec(tmp_path: Path) -> None:
    spec = load_spec_file(write(tmp_path, "psi.toml", SPEC), "bank")
    assert spec == JobSpec(
        "psi",
        (
            Participant("bank", "member", "loans", {"id": "company_id"}),
            Participant("tax", "member", "filings", {"id": "uscc"}),
        ),
        ("bank",),
        "Align the loan book with tax filings",
        "bank",
        {"mode": "cardinality"},
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("receivers =", "recievers ="), "did you mean 'receivers'"),
        (('protocol = "psi"', 'protocol = "psl"'), "did you mean 'psi'"),
        (('mode = "cardinality"', 'mod = "cardinality"'), "did you mean 'mode' for 'mod'"),
        (('mode = "cardinality"', 'mode = "all"'), "'intersection' or 'cardinality'"),
        (('role = "member"\ndataset = "loans"', 'role = "member"\ndatset = "loans"'), "dataset"),
        (('party = "tax"', 'party = "tax bureau"'), "participants[2].party must be a name"),
        (('mode = "cardinality"', "mode = 1979-05-27"), "params.mode must be a string, a number"),
        (('mode = "cardinality"', 'mode = "<mode>"'), "params.mode is still a template"),
    ],
)
def test_spec_errors_name_file_and_key(tmp_path: Path, change: tuple[str, str], words: str) -> None:
    path = write(tmp_path, "spec.toml", SPEC.replace(*change, 1))
    with pytest.raises(InvalidJobSpecError, match=re.escape(words)) as err:
        load_spec_file(path, "bank")
    assert str(err.value).startswith(f"{path}: ")


def test_a_spec_string_for_participants_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "spec.toml", 'protocol = "psi"\nparticipants = "bank"\n')
    r = CliRunner().invoke(app, ["config", "check", str(path)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert "participants must be an array" in r.output and "Traceback" not in r.output


def test_workflow_errors_name_the_step_and_the_nearest_parameter(tmp_path: Path) -> None:
    text = (EXAMPLES / "workflow.toml").read_text(encoding="utf-8")
    path = write(tmp_path, "wf.toml", text.replace("epochs = 10", "epoch = 10"))
    with pytest.raises(WorkflowSpecError, match=r"training \(vertical_lr\).*'epochs' for 'epoch'"):
        load_credit_workflow(path, "bank")
    path = write(tmp_path, "wf.toml", text.replace('party = "tax"', 'party = "tax"\nparti = 1'))
    with pytest.raises(
        WorkflowSpecError, match=r"providers\[1\]\.parti: .*'providers\[1\]\.party'"
    ):
        load_credit_workflow(path, "bank")
    path = write(tmp_path, "wf.toml", text.replace('workflow = "credit-model"', 'workflow = "x"'))
    with pytest.raises(WorkflowSpecError, match="describes workflow 'x', not credit-model"):
        load_credit_workflow(path, "bank")


def test_regulator_file_is_checked(federation: Federation, tmp_path: Path) -> None:
    reg = federation.party_dir("regulator")
    bank = federation.party_dir("bank")
    good = (
        f'[tls]\nca = "{reg / "ca.pem"}"\ncert = "{reg / "node.pem"}"\nkey = "{reg / "node.key"}"\n'
        f'[federation]\nrevocations = "{reg / "revocations.json"}"\n'
        f'[parties.bank]\naddress = "127.0.0.1:7443"\n'
        f'audit_public_key = "{bank / "audit_ed25519.pub"}"\n'
    )
    assert set(load_regulator_config(write(tmp_path, "r.toml", good)).parties) == {"bank"}
    bad = good.replace("127.0.0.1:7443", "127.0.0.1").replace("[tls]", "timeout_s = 5\n[tls]")
    path = write(tmp_path, "r.toml", bad)
    with pytest.raises(ConfigError) as err:
        load_regulator_config(path)
    text = str(err.value)
    assert 'parties.bank.address must be "HOST:PORT"' in text
    assert "timeout_s: unknown key" in text and "'limits.timeout_s'" in text


@pytest.mark.parametrize(
    "deep",
    [
        "x = " + "[" * 100_000 + "]" * 100_000,
        "x = " + "{a = " * 5_000 + "1" + "}" * 5_000,
        "[" + ".".join(["a"] * 5_000) + "]\nb = 1",
    ],
)
@pytest.mark.parametrize("kind", ["node", "policy", "spec", "workflow", "regulator"])
def test_deep_nesting_is_a_clean_error(tmp_path: Path, deep: str, kind: str) -> None:
    path = write(tmp_path, f"{kind}.toml", deep + "\n")
    result = check_file(path, kind)
    assert not result.ok
    assert f"nests at most {MAX_DEPTH} levels" in result.errors[0], result.errors


# --- protocol parameters and roles -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_each_protocol_declares_typed_parameters_with_descriptions(name: str) -> None:
    definition = PROTOCOLS[name]
    assert issubclass(definition.params, ProtocolParams)
    assert definition.params.model_config.get("extra") == "forbid"
    for field, info in definition.params.model_fields.items():
        assert info.description, f"{name}.{field} has no description"
    assert set(definition.role_requirements) == set(definition.roles)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_a_misspelt_parameter_is_refused_naming_the_nearest(name: str) -> None:
    definition = PROTOCOLS[name]
    fields = definition.params.model_fields
    field = max((f for f in fields if f[:-1] not in fields), key=len)
    spec = JobSpec(name, (Participant("a", "r"),), ("a",), "p", "a", {field[:-1]: 1})
    with pytest.raises(InvalidJobSpecError, match=rf"did you mean '{field}' for '{field[:-1]}'"):
        definition.parse_params(spec)


def test_literal_choices_match_their_sources() -> None:
    params = dp_stats.DpStatsParams.model_fields
    assert get_args(params["kind"].annotation) == tuple(k.value for k in QueryKind)
    assert ckks_scoring.KINDS == tuple(ckks_scoring.DEFAULT_TOLERANCE)
    degrees = ckks_scoring.CkksScoringParams.model_fields["degree"].annotation
    assert set(get_args(degrees)) == set(ckks.SCORING_COEFF_MOD_BITS)


def test_a_null_parameter_is_the_same_as_one_left_out() -> None:
    spec = JobSpec(
        "woe_iv",
        (
            Participant("bank", "label_holder", "l", {"id": "i", "label": "y"}),
            Participant("tax", "feature_holder", "f", {"id": "i"}),
        ),
        ("bank",),
        "p",
        "bank",
        {"bins": None},
    )
    assert PROTOCOLS["woe_iv"].parse_params(spec).model_dump()["bins"] == 10


def test_parameters_are_strict() -> None:
    base = psi.DEFINITION
    parts = (
        Participant("a", "member", "d", {"id": "x"}),
        Participant("b", "member", "d", {"id": "y"}),
    )
    woe = PROTOCOLS["woe_iv"]
    vparts = (
        Participant("bank", "label_holder", "l", {"id": "i", "label": "y"}),
        Participant("tax", "feature_holder", "f", {"id": "i"}),
    )
    for value in ("10", 10.0, True):
        spec = JobSpec("woe_iv", vparts, ("bank",), "p", "bank", {"bins": value})
        with pytest.raises(InvalidJobSpecError, match=r"parameter bins must be an integer in \[2,"):
            woe.validate(spec)
    base.validate(JobSpec("psi", parts, ("a",), "p", "a", {"mode": "cardinality"}))


def _member(ctx: object) -> Result | None:
    return None


def test_role_requirements_are_checked_generically() -> None:
    definition = ProtocolDef(
        name="demo_roles",
        version="1",
        roles={"lead": _member, "helper": _member},
        outputs=lambda spec: frozenset(),
        learns=lambda spec: {},
        role_requirements={
            "lead": RoleRequirement(dataset=False, receives=True),
            "helper": RoleRequirement(min=2, max=3, columns=("id",), receives=False, why="w"),
        },
    )

    def spec(*parts: Participant, receivers: tuple[str, ...] = ("l",)) -> JobSpec:
        return JobSpec("demo_roles", parts, receivers, "p", parts[0].party)

    lead = Participant("l", "lead")
    h1, h2 = (Participant(h, "helper", "d", {"id": "c"}) for h in ("h1", "h2"))
    definition.validate(spec(lead, h1, h2))
    cases = [
        (spec(lead, h1), r"needs exactly one 'lead' and 2 to 3 participants .*names 1 'helper': w"),
        (spec(lead, h1, Participant("h2", "helpr")), r"has role 'helpr'.*did you mean 'helper'"),
        (spec(lead, h1, Participant("h2", "helper", "d")), r"bind the logical column 'id'"),
        (spec(lead, h1, h2, receivers=("h1",)), r"add \['l'\] to the receivers"),
        (spec(lead, h1, h2, receivers=("l", "h1")), r"only receiver of demo_roles is \['l'\]"),
    ]
    for bad, words in cases:
        with pytest.raises(InvalidJobSpecError, match=words):
            definition.validate(bad)
    with pytest.raises(ValueError, match="lacks"):
        ProtocolDef(
            "x",
            "1",
            {},
            lambda s: frozenset(),
            lambda s: {},
            role_requirements={"a": RoleRequirement()},
        )


# --- templates and `bund config check` ---------------------------------------------------------

REQUIRED = {
    "psi": {"mode": '"cardinality"'},
    "psi_multi": {"mode": '"intersection"'},
    "psi_unbalanced": {"phase": '"setup"'},
    "dp_stats": {"kind": '"count"', "epsilon": '"1/2"', "min_cell": "5"},
    "ckks_scoring": {"features": '"age,bmi"', "model": '"logistic"'},
    "paillier_scoring": {"features": '"age,bmi"'},
    "vertical_score": {"model_job": '"' + "ab" * 16 + '"'},
    "serving_contract": {
        "model_job": '"' + "ab" * 16 + '"',
        "expires": f'"{dt.date.today() + dt.timedelta(days=30)}T00:00:00Z"',
        "max_daily": "1000",
    },
    "cox_ph": {"features": '"age,bmi_kg_m2"', "upper": '"2190"', "bins": "6"},
    "vertical_tree_score": {"model_job": '"' + "ab" * 16 + '"'},
}


def fill(text: str, protocol: str) -> str:
    for name, value in REQUIRED.get(protocol, {}).items():
        text = text.replace(f'{name} = "<{name}>"', f"{name} = {value}")
    text = re.sub(r'"<party (\d+)>"', r'"party-\1"', text)
    text = re.sub(r'"<dataset of party (\d+)>"', r'"data-\1"', text)
    text = re.sub(r'"<its (\w+) column>"', r'"\1_column"', text)
    return text.replace('"<purpose>"', '"Check the template of the protocol"')


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_job_init_writes_a_template_that_checks_once_filled(tmp_path: Path, name: str) -> None:
    runner = CliRunner()
    out = tmp_path / f"{name}.toml"
    r = runner.invoke(app, ["job", "init", name, "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    for field, info in PROTOCOLS[name].params.model_fields.items():
        assert f"# {field}" in text and str(info.description)[:30] in " ".join(text.split())
    r = runner.invoke(app, ["config", "check", str(out)])
    assert r.exit_code == 1 and "template placeholder" in r.output
    out.write_text(fill(text, name), encoding="utf-8")
    r = runner.invoke(app, ["config", "check", str(out)])
    assert r.exit_code == 0 and "ok (spec)" in r.output, r.output
    # Every default the template shows is valid too.
    shown = re.sub(r'^# (\w+) = (?!"<)(.+)$', r"\1 = \2", fill(text, name), flags=re.MULTILINE)
    assert load_spec_file(write(tmp_path, "defaults.toml", shown)).protocol == name


def test_job_init_of_an_unknown_protocol_suggests_the_nearest() -> None:
    r = CliRunner().invoke(app, ["job", "init", "psl"])
    assert r.exit_code == 1 and "did you mean 'psi'" in r.output


def test_job_init_prints_each_parameter_with_type_range_and_default() -> None:
    r = CliRunner().invoke(app, ["job", "init", "woe_iv"])
    assert r.exit_code == 0
    assert "# bins: quantile bins per feature" in r.output
    assert "an integer in [2, 64]; default 10" in r.output and "# bins = 10" in r.output


def test_templates_of_node_and_policy_check_with_their_examples(tmp_path: Path) -> None:
    write(tmp_path, "node.toml", node_template("bank"))
    write(tmp_path, "policy.toml", policy_template("bank"))
    assert check_file(tmp_path / "node.toml").ok and check_file(tmp_path / "policy.toml").ok
    # The commented examples are valid as written, once uncommented (together).
    for name in ("node.toml", "policy.toml"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        text = re.sub(r"^# (\[|[a-z_]+ = )", r"\1", text, flags=re.MULTILINE)
        (tmp_path / name).write_text(text, encoding="utf-8")
    result = check_file(tmp_path / "node.toml")
    assert result.ok, result.errors
    assert load_config(tmp_path / "node.toml").datasets["loan_book"].kind == "csv"


def test_config_check_reports_ok_and_errors_with_exit_codes(node_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    spec = write(tmp_path, "job.toml", SPEC)
    r = runner.invoke(app, ["config", "check", str(node_dir / "node.toml"), str(spec)])
    assert r.exit_code == 0 and "ok (node)" in r.output and "ok (spec)" in r.output
    bad = write(tmp_path, "bad.toml", SPEC.replace("receivers", "recievers"))
    r = runner.invoke(app, ["config", "check", str(spec), str(bad)])
    assert r.exit_code == 1 and f"{bad}: recievers: unknown key" in r.output
    r = runner.invoke(app, ["config", "check", "--kind", "policy", str(node_dir / "node.toml")])
    assert r.exit_code == 1 and "party: unknown key" in r.output
    r = runner.invoke(app, ["config", "check", "--kind", "nodes", str(spec)])
    assert r.exit_code == 1 and "--kind must be one of" in r.output
    r = runner.invoke(app, ["config", "check", str(tmp_path / "missing.toml")])
    assert r.exit_code == 1 and "not found" in r.output


def test_kinds_are_detected_from_name_or_keys(tmp_path: Path) -> None:
    assert detect_kind(Path("node.toml"), {}) == "node"
    assert detect_kind(Path("x.toml"), {"party": "a", "listen": "b", "tls": {}}) == "node"
    assert detect_kind(Path("x.toml"), {"protocol": "psi", "participants": []}) == "spec"
    assert detect_kind(Path("x.toml"), {"workflow": "credit-model", "providers": []}) == "workflow"
    assert detect_kind(Path("x.toml"), {"parties": {}, "tls": {}}) == "regulator"
    assert detect_kind(Path("x.toml"), {"cohort_floor": 5}) == "policy"
    assert detect_kind(Path("x.toml"), {"limits": {}}) is None
    assert set(NodeFile.model_fields) >= {"party", "listen"}


def test_shipped_examples_check(tmp_path: Path) -> None:
    for name in ("workflow.toml", "screening.toml", "training.toml"):
        result = check_file(EXAMPLES / name, party="bank")
        assert result.ok, result.errors
    # scoring.toml asks for the training job's id until it has one
    result = check_file(EXAMPLES / "scoring.toml")
    assert not result.ok and "model_job" in result.errors[0]


def test_demo_configs_check(tmp_path: Path) -> None:
    for scenario in (demo.FINANCE, demo.HEALTH):
        for party in scenario.parties:
            (tmp_path / party.name).mkdir()
            others = [o for o in scenario.parties if o is not party]
            files = demo.node_files(tmp_path, party, tmp_path / "data", others, tmp_path / "peers")
            path = write_node_files(files)
            result = check_file(path)
            assert result.ok, result.errors
            assert check_file(path.parent / "policy.toml", party=party.name).ok


def test_bund_errors_never_escape_as_tracebacks(tmp_path: Path) -> None:
    for text in ("party = [1, 2]", "[datasets]\nx = 3", "tls = []", "= broken"):
        path = write(tmp_path, "node.toml", text)
        result = check_file(path)
        assert not result.ok and all(line.startswith(f"{path}") for line in result.errors)
    with pytest.raises(BundError):
        load_config(write(tmp_path, "node.toml", "peers = 3"))


def test_the_tree_workflow_trains_and_scores_with_secureboost(tmp_path: Path) -> None:
    workflow = load_credit_workflow(EXAMPLES / "workflow-trees.toml", "bank")
    assert [p for _, p, _ in workflow.steps] == [
        "woe_iv",
        "vertical_secureboost",
        "vertical_tree_score",
    ]
    assert workflow.spec("training").protocol == "vertical_secureboost"
    assert workflow.spec("training").params["n_estimators"] == 30
    assert workflow.spec("scoring", "0" * 32).protocol == "vertical_tree_score"
    text = (EXAMPLES / "workflow-trees.toml").read_text(encoding="utf-8")
    path = write(tmp_path, "wf.toml", text.replace("n_estimators = 30", "epochs = 30"))
    with pytest.raises(WorkflowSpecError, match=r"training \(vertical_secureboost\).*'epochs'"):
        load_credit_workflow(path, "bank")
    path = write(tmp_path, "wf.toml", text.replace('model = "secureboost"', 'model = "forest"'))
    with pytest.raises(WorkflowSpecError, match="model"):
        load_credit_workflow(path, "bank")
