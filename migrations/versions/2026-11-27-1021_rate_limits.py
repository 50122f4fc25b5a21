"""rate limits: policy max_authorize_per_minute and the shared limiter state

Revision ID: cb006564c65c
Revises: 4617bf68c887
Create Date: 2026-11-27 10:21:33.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cb006564c65c"
down_revision: str | None = "4617bf68c887"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "subject", name=op.f("pk_rate_limits")),
    )
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_authorize_per_minute", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_column("max_authorize_per_minute")
    op.drop_table("rate_limits")
