"""Every table, imported in one place so Alembic sees the whole schema."""

from app.audit.models import AuditEntry
from app.auth.models import ApiKey
from app.credentials.models import StoredCredential
from app.db import Base
from app.decisions.models import AnnotationOutbox, Decision, IdempotencyRecord, TokenClaim
from app.operators.models import Operator, Policy

__all__ = [
    "AnnotationOutbox",
    "ApiKey",
    "AuditEntry",
    "Base",
    "Decision",
    "IdempotencyRecord",
    "Operator",
    "Policy",
    "StoredCredential",
    "TokenClaim",
]
