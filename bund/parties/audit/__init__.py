"""Append-only, hash-chained, signed audit log; its stores; verification; JSON-lines export.

Every node keeps one log. A record holds who did what and never payload content; each record is
bound to the one before it by a hash chain and signed with the node's audit key. The party signs
tree heads (checkpoints: its log's size and Merkle root) that the regulator keeps, so that a log
later truncated, or rewritten and re-signed with the party's own key, is caught; and every
node witnesses its peers' tree heads between the regulator's audits. ``docs/audit.md``
says what each check proves. One module per part, all names importable from here:

* :mod:`~bund.parties.audit.records`: :class:`AuditRecord`, the fields it may hold, its body;
* :mod:`~bund.parties.audit.log`: :class:`AuditLog`, which signs, chains and appends records;
* :mod:`~bund.parties.audit.stores`: the :class:`AuditStore` interface; memory, SQLite and
  PostgreSQL stores; :func:`open_audit_store`;
* :mod:`~bund.parties.audit.verify`: :func:`verify_records`, :func:`verify_store`;
* :mod:`~bund.parties.audit.treehead`: :class:`Checkpoint` and the regulator's
  :func:`check_log_against_checkpoints`;
* :mod:`~bund.parties.audit.witness`: witness cosigning: :class:`Witness`, which checks, keeps
  and countersigns other parties' heads (:class:`WitnessedHead`) in a :class:`WitnessStore`,
  and the node's :class:`WitnessExchange` thread;
* :mod:`~bund.parties.audit.jsonl`: export and strict import of JSON lines.

The hashing itself is pure and lives in :mod:`bund.compute.merkle` (RFC 6962 trees, proofs, the
chain link) and :mod:`bund.compute.canonical` (the canonical JSON of a record's body).
"""

from bund.parties.audit.jsonl import export_jsonl, iter_jsonl, read_jsonl
from bund.parties.audit.log import AuditLog, AuditLogCorruptError
from bund.parties.audit.records import (
    GENESIS_HASH,
    SIGNATURE_SIZE,
    SIGNING_DOMAIN,
    AuditFormatError,
    AuditRecord,
    JsonScalar,
    is_timestamp,
    parse_timestamp,
)
from bund.parties.audit.stores import (
    SCHEMA_VERSION,
    AuditLogConflictError,
    AuditStore,
    AuditStoreUnavailableError,
    MemoryAuditStore,
    PostgresAuditStore,
    SqlAuditStore,
    SqliteAuditStore,
    open_audit_store,
)
from bund.parties.audit.treehead import (
    CHECKPOINT_DOMAIN,
    Checkpoint,
    CheckpointReport,
    LogFault,
    check_log_against_checkpoints,
    verify_checkpoint,
)
from bund.parties.audit.verify import (
    VerificationReport,
    read_readable,
    verify_records,
    verify_store,
)
from bund.parties.audit.witness import (
    COSIGNATURE_DOMAIN,
    Witness,
    WitnessConflictError,
    WitnessedHead,
    WitnessError,
    WitnessExchange,
    WitnessKeyError,
    WitnessReply,
    WitnessStore,
    cosign,
    verify_cosignature,
)

__all__ = [
    "CHECKPOINT_DOMAIN",
    "COSIGNATURE_DOMAIN",
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "SIGNATURE_SIZE",
    "SIGNING_DOMAIN",
    "AuditFormatError",
    "AuditLog",
    "AuditLogConflictError",
    "AuditLogCorruptError",
    "AuditRecord",
    "AuditStore",
    "AuditStoreUnavailableError",
    "Checkpoint",
    "CheckpointReport",
    "JsonScalar",
    "LogFault",
    "MemoryAuditStore",
    "PostgresAuditStore",
    "SqlAuditStore",
    "SqliteAuditStore",
    "VerificationReport",
    "Witness",
    "WitnessConflictError",
    "WitnessError",
    "WitnessExchange",
    "WitnessKeyError",
    "WitnessReply",
    "WitnessStore",
    "WitnessedHead",
    "check_log_against_checkpoints",
    "cosign",
    "export_jsonl",
    "is_timestamp",
    "iter_jsonl",
    "open_audit_store",
    "parse_timestamp",
    "read_jsonl",
    "read_readable",
    "verify_checkpoint",
    "verify_cosignature",
    "verify_records",
    "verify_store",
]
