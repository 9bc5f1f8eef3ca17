"""Admission: may this node take part in a job, and on what terms?

A spec goes in; out comes what this node's approver would be asked to sign (an
:class:`~bund.parties.approvals.ApprovalRequest`), ``None`` when this node brings no dataset, or
a refusal that names the rule (policy, dataset version pin, cohort floor, privacy budget). This
module talks to no peer, starts no thread and changes no job's state: the manager decides what
to do with its answer.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bund.compute.errors import BundError
from bund.parties.approvals import ApprovalError, ApprovalRequest, verify_approval
from bund.parties.data import DatasetError, Table
from bund.parties.identity import raw_key_id
from bund.parties.jobs import InvalidJobSpecError, JobSpec, JsonScalar, ProtocolDef
from bund.parties.ledger import BudgetLedger
from bund.parties.lifecycle.events import Key
from bund.parties.policy import Policy, PolicyRefusedError


class Admission:
    """This node's judgement of jobs against its own policy, catalog and budgets.

    Args:
        party: This node's party.
        protocols: The protocols this node runs, by name.
        policy: This node's policy.
        tables: A loader per catalogued dataset (each reads its source on first use).
        ledger: This node's privacy-budget ledger.
        approvers: This node's approvers by name, each with the public key of their own
            machine (at least the policy's quorum when approvals are required).
        code_version: The running code's version, bound into every approval.
    """

    def __init__(
        self,
        party: str,
        protocols: Mapping[str, ProtocolDef],
        policy: Policy,
        tables: Mapping[str, Callable[[], Table]],
        ledger: BudgetLedger,
        approvers: Mapping[str, Ed25519PublicKey],
        code_version: str,
    ) -> None:
        if policy.approvals_required and not approvers:
            raise ValueError("approvals are required but no approver key was given")
        self.party = party
        self.protocols = protocols
        self.policy = policy
        self.ledger = ledger
        self.code_version = code_version
        #: A loader per catalogued dataset (replaced when the catalogue is reloaded).
        self.tables = tables
        self.approvers = dict(approvers)

    def definition(self, spec: JobSpec) -> ProtocolDef:
        """The protocol of ``spec``, after checking the spec against it."""
        definition = self.protocols.get(spec.protocol)
        if definition is None:
            raise InvalidJobSpecError(
                f"unknown protocol {spec.protocol!r}; this node runs {sorted(self.protocols)}"
            )
        definition.validate(spec)
        return definition

    def table(self, dataset: str) -> Table:
        """One of this node's datasets."""
        loader = self.tables.get(dataset)
        if loader is None:
            raise PolicyRefusedError(
                f"{self.party}'s node has no source for dataset {dataset!r}; its operator can "
                f"declare [datasets.{dataset}] in node.toml"
            )
        return loader()

    def table_loader(self, dataset: str | None) -> Callable[[], Table] | None:
        """The loader of one of this node's datasets (None when the job brings none)."""
        return None if dataset is None else self.tables.get(dataset)

    def approval_request(self, spec: JobSpec) -> ApprovalRequest | None:
        """What this node's approver would sign for ``spec``; None when it brings no dataset."""
        definition = self.definition(spec)
        me = spec.participant(self.party)
        if me.dataset is None:
            return None
        entry = self.policy.datasets[me.dataset]
        return ApprovalRequest(
            spec=spec,
            party=self.party,
            code_version=self.code_version,
            dataset=me.dataset,
            level=entry.level,
            dataset_version=self.table(me.dataset).content_hash(),
            outputs=tuple(sorted(definition.outputs(spec))),
            learns=dict(definition.learns(spec)),
            cost=definition.cost(spec, self.party),
        )

    def check(self, spec: JobSpec, requester_role: str | None) -> ApprovalRequest | None:
        """Shape, policy, dataset version pin, cohort floor and budget; raise on any."""
        definition = self.definition(spec)
        self.policy.check(spec, self.party, definition.outputs(spec), requester_role)
        for peer, risk in sorted(definition.trusts(spec, self.party).items()):
            self.policy.check_trusted(peer, spec.protocol, risk)
        request = self.approval_request(spec)
        if request is None:
            return None
        self.check_bindings(spec)  # before anything is reserved; names only missing columns
        definition.check_owner(spec, self.party, self.policy)
        entry = self.policy.datasets[request.dataset]
        if entry.version is not None and not hmac.compare_digest(
            entry.version, request.dataset_version
        ):
            raise PolicyRefusedError(
                f"dataset {request.dataset!r} no longer matches the version pinned in policy.toml "
                f"({entry.version[:16]}..., now {request.dataset_version[:16]}...); its owner must "
                "review the change and update the pin"
            )
        self.policy.check_cohort(request.dataset, self.table(request.dataset).num_rows)
        self.ledger.check_caps(request.dataset, spec.requester, request.cost)
        return request

    def check_bindings(self, spec: JobSpec) -> None:
        """Refuse a job that reads a column this node's dataset lacks, naming only those columns.

        Runs at admission before anything is reserved, and at the requester's own submission.
        A spec its protocol refuses is left to :meth:`check`, which gives that reason instead.

        Raises:
            DatasetError: Naming the missing columns, never the dataset's other columns.
        """
        definition = self.protocols.get(spec.protocol)
        if definition is None or self.party not in spec.parties:
            return
        dataset = spec.participant(self.party).dataset
        if dataset is None or dataset not in self.tables:
            return
        try:
            definition.validate(spec)
        except BundError:
            return
        missing = definition.missing_columns(spec, self.party, self.table(dataset).columns)
        if missing:
            raise DatasetError(
                f"{self.party}'s dataset {dataset!r} has no column "
                f"{', '.join(repr(c) for c in missing)}, which the job reads: bind a column it "
                "has (columns = {...} in the participant's entry) or change the query"
            )

    def needs_approval(self, request: ApprovalRequest | None) -> bool:
        """Whether a job whose checks passed must wait for this node's approver."""
        return request is not None and self.policy.approvals_required

    def quorum(self, request: ApprovalRequest) -> int:
        """How many of this node's approvers must approve ``request``'s job."""
        return self.policy.quorum_for(request.level)

    def verify(
        self, request: ApprovalRequest, signature: bytes
    ) -> tuple[str, dict[str, JsonScalar]]:
        """Which approver signed ``request``, and the fields of its ``job_approved`` record.

        Raises:
            ApprovalError: No approver of this node signed these bytes.
        """
        if not self.approvers:
            raise ApprovalError("this node has no approver key: approvals are not required here")
        for name, key in sorted(self.approvers.items()):
            try:
                verify_approval(request, signature, key)
            except ApprovalError:
                continue
            return name, {
                Key.SPEC_SHA256: request.spec.digest(),
                Key.DATASET: request.dataset,
                Key.DATASET_VERSION: request.dataset_version,
                Key.CODE_VERSION: request.code_version,
                Key.APPROVER: name,
                "approver_key": raw_key_id(key),
                Key.SIGNATURE: signature.hex(),
            }
        raise ApprovalError(
            "the approval does not verify with any approver key of this node: it was signed by "
            "another key or for another spec, code version or dataset version; approve the job "
            "again"
        )

    def commit(self, spec: JobSpec, request: ApprovalRequest | None) -> dict[str, JsonScalar]:
        """Reserve the most the job can cost (charged when it starts); the acceptance's fields.

        The reservation is released if the job never starts, and its unused part when it ends.
        """
        fields: dict[str, JsonScalar] = {
            Key.SPEC_SHA256: spec.digest(),
            Key.APPROVALS_REQUIRED: self.policy.approvals_required,
        }
        if request is not None:
            self.ledger.reserve(spec.job_id, request.dataset, spec.requester, request.cost)
            fields.update(
                {Key.DATASET: request.dataset, Key.DATASET_VERSION: request.dataset_version}
            )
        return fields

    def recheck(self, spec: JobSpec, admitted: bytes | None) -> ApprovalRequest | None:
        """At the start of a role: the dataset and code must be those the job was admitted on.

        ``admitted`` is the approval payload the job was accepted on (kept by the job store).

        Raises:
            ApprovalError: The dataset or the code changed since admission.
        """
        request = self.approval_request(spec)
        if request is not None and admitted is not None and request.payload() != admitted:
            raise ApprovalError(
                f"dataset {request.dataset!r} or the code changed since this job was "
                "approved; submit it again for a new approval"
            )
        return request
