"""The model registry: metadata database, artifact store and audit trail."""

from modelyard.registry.client import PRODUCTION, Registry, parse_ref, parse_reference
from modelyard.registry.database import Database
from modelyard.registry.records import (
    AliasEvent,
    AuditEvent,
    Model,
    ModelVersion,
    Run,
    TrainedOn,
)

__all__ = [
    "PRODUCTION",
    "AliasEvent",
    "AuditEvent",
    "Database",
    "Model",
    "ModelVersion",
    "Registry",
    "Run",
    "TrainedOn",
    "parse_ref",
    "parse_reference",
]
