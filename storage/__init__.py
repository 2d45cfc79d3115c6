"""deepsc-node storage: database models, repository functions, file stores, migrations.

Knows nothing about networking or models. SQLite by default, PostgreSQL in
production; the schema is managed by the Alembic migrations shipped in
``storage/migrations`` (:func:`upgrade_database`).
"""

import logging

from storage.audit import (
    AssociationRecord,
    ResultSendRecord,
    finish_association,
    recent_associations,
    recent_result_sends,
    record_association,
)
from storage.db import (
    create_database_engine,
    current_revision,
    dispose_engines,
    downgrade_database,
    get_engine,
    head_revision,
    make_session_factory,
    upgrade_database,
)
from storage.errors import (
    ExportStateError,
    IllegalTransitionError,
    InvalidUIDError,
    NotFoundError,
    StorageError,
)
from storage.exports import (
    backoff_delay,
    due_exports,
    exports_for_job,
    record_export_attempt,
    record_results,
    recorded_result_paths,
    result_objects_for_job,
    result_summary,
    update_job_export_state,
)
from storage.filestore import InstanceStore, ResultStore, StoredFile, UIDFileStore
from storage.models import AssociationOutcome, ExportStatus
from storage.records import (
    DueExport,
    ExportRecord,
    InstanceAttributes,
    InstanceOutcome,
    InstanceRecord,
    JobAction,
    JobEventRecord,
    JobRecord,
    RecordedInstance,
    RecoverySummary,
    ResultObjectRecord,
    ResultObjectSpec,
    SeriesRecord,
    StatusOverview,
)
from storage.repository import (
    claim_next_job,
    due_jobs,
    get_job,
    get_series,
    heartbeat,
    is_own_output,
    job_events,
    jobs_for_series,
    latest_job_for_series,
    record_instance,
    recover_after_restart,
    series_instances,
    status_overview,
    transition_job,
)
from storage.states import ALLOWED_TRANSITIONS, TERMINAL_STATES, JobState
from storage.uids import is_valid_uid, validate_uid

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ALLOWED_TRANSITIONS",
    "AssociationOutcome",
    "AssociationRecord",
    "DueExport",
    "ExportRecord",
    "ExportStateError",
    "ExportStatus",
    "IllegalTransitionError",
    "InstanceAttributes",
    "InstanceOutcome",
    "InstanceRecord",
    "InstanceStore",
    "InvalidUIDError",
    "JobAction",
    "JobEventRecord",
    "JobRecord",
    "JobState",
    "NotFoundError",
    "RecordedInstance",
    "RecoverySummary",
    "ResultSendRecord",
    "ResultObjectRecord",
    "ResultObjectSpec",
    "ResultStore",
    "SeriesRecord",
    "StatusOverview",
    "StorageError",
    "StoredFile",
    "TERMINAL_STATES",
    "UIDFileStore",
    "backoff_delay",
    "claim_next_job",
    "create_database_engine",
    "current_revision",
    "dispose_engines",
    "downgrade_database",
    "due_exports",
    "due_jobs",
    "exports_for_job",
    "finish_association",
    "get_engine",
    "get_job",
    "get_series",
    "head_revision",
    "heartbeat",
    "is_own_output",
    "is_valid_uid",
    "job_events",
    "jobs_for_series",
    "latest_job_for_series",
    "make_session_factory",
    "recent_associations",
    "recent_result_sends",
    "record_association",
    "record_export_attempt",
    "record_instance",
    "record_results",
    "recover_after_restart",
    "recorded_result_paths",
    "result_objects_for_job",
    "result_summary",
    "series_instances",
    "status_overview",
    "transition_job",
    "update_job_export_state",
    "upgrade_database",
    "validate_uid",
]
