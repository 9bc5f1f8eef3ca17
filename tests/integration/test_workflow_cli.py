"""`bund workflow run credit-model` and the step-by-step spec files of examples/credit/."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bund.compute import insecure
from bund.parties.cli import app
from bund.parties.data import Table
from bund.parties.demo_data import generate_finance
from tests.conftest import NodeFactory
from tests.integration.test_credit_workflow import start_nodes
from tests.protocols.test_vertical_score import APPLICANTS

EXAMPLES = Path(__file__).parents[2] / "examples" / "credit"


@pytest.fixture
def small_keys() -> Iterator[None]:
    insecure.enable_insecure_test_parameters()  # 512-bit Paillier keys: tests only
    yield


@pytest.fixture(scope="module")
def data() -> dict[str, Table]:
    return generate_finance(1500, 11, applicants=APPLICANTS)


def example(name: str, tmp_path: Path, after: str) -> Path:
    """A copy of an example file with test-size keys added after each ``after`` table header."""
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    text = re.sub(rf"^(\[{after}\].*)$", r"\1\nkey_bits = 512", text, flags=re.M)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def job_id(output: str) -> str:
    found = re.search(r"submitted job ([0-9a-f]{32})", output)
    assert found, output
    return found.group(1)


@pytest.mark.usefixtures("small_keys")
def test_workflow_run_chains_the_three_steps(
    node_factory: NodeFactory, data: dict[str, Table], tmp_path: Path
) -> None:
    start_nodes(node_factory, data)
    spec = example("workflow.toml", tmp_path, "(?:screening|training)")
    config = str(node_factory.config("bank").source)
    out = tmp_path / "results"
    r = CliRunner().invoke(
        app,
        ["workflow", "run", "credit-model", "--config", config, "--spec", str(spec)]
        + ["--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    for words in ("screening", "training", "scoring", "bank only", "joint", "AUC", "succeeded"):
        assert words in r.output, words
    assert {p.name for p in out.iterdir()} == {"screening", "training", "scoring"}
    assert {"roc.png", "ks.png", "model.json"} <= {p.name for p in (out / "training").iterdir()}
    rows = list(csv.DictReader(io.StringIO((out / "scoring" / "scores.csv").read_text())))
    assert len(rows) == APPLICANTS
    assert {r["decision"] for r in rows} == {"approve", "decline", "refer"}


@pytest.mark.usefixtures("small_keys")
def test_the_example_specs_run_step_by_step(
    node_factory: NodeFactory, data: dict[str, Table], tmp_path: Path
) -> None:
    start_nodes(node_factory, data)
    config = str(node_factory.config("bank").source)
    runner = CliRunner()
    r = runner.invoke(
        app, ["job", "submit", str(example("screening.toml", tmp_path, "params")), "-c", config]
    )
    assert r.exit_code == 0 and "iv.tax." in r.output, r.output
    r = runner.invoke(
        app, ["job", "submit", str(example("training.toml", tmp_path, "params")), "-c", config]
    )
    assert r.exit_code == 0 and "auc_bank_only" in r.output, r.output
    training = job_id(r.output)
    node_factory.wait_closed(training)  # every provider has stored its part of the model
    # The shipped scoring spec asks for the training job's id and says so until it has one.
    r = runner.invoke(app, ["job", "submit", str(EXAMPLES / "scoring.toml"), "-c", config])
    assert r.exit_code == 1 and "model_job" in r.output
    scoring = tmp_path / "scoring.toml"
    text = (EXAMPLES / "scoring.toml").read_text(encoding="utf-8")
    scoring.write_text(text.replace("PUT-THE-TRAINING-JOB-ID-HERE", training), encoding="utf-8")
    r = runner.invoke(app, ["job", "submit", str(scoring), "-c", config])
    assert r.exit_code == 0, r.output
    assert re.search(rf"applicants\W+{APPLICANTS}\b", r.output), r.output
    assert "scores.csv" in r.output


def test_workflow_run_names_a_bad_workflow_or_file(
    node_factory: NodeFactory, data: dict[str, Table], tmp_path: Path
) -> None:
    start_nodes(node_factory, data)
    config = str(node_factory.config("bank").source)
    runner = CliRunner()
    spec = str(EXAMPLES / "workflow.toml")
    r = runner.invoke(app, ["workflow", "run", "fraud-model", "-c", config, "--spec", spec])
    assert r.exit_code == 1 and "unknown workflow 'fraud-model'" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text(
        (EXAMPLES / "workflow.toml").read_text().replace(', label = "default_12m"', ""), "utf-8"
    )
    r = runner.invoke(app, ["workflow", "run", "credit-model", "-c", config, "--spec", str(bad)])
    assert r.exit_code == 1 and "label" in r.output
    r = runner.invoke(
        app, ["workflow", "run", "credit-model", "-c", config, "--spec", str(tmp_path / "no")]
    )
    assert r.exit_code == 1 and "not found" in r.output
    with node_factory.client("bank") as bank:
        assert bank.list_jobs() == []  # nothing was submitted
