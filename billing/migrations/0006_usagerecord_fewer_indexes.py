"""Three fewer indexes on the usage record, the table every request inserts into.

tenant_id and api_key_id each lead a (…, created_at) index that serves the same
lookups, and request_id's LIKE-prefix twin (PostgreSQL) serves no query. The
database side only drops indexes: Django's own AlterField of a foreign key would
drop and re-add the constraint, which checks every row of a large table again.
The new request_id index is built before the old one goes.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

TABLE = "billing_usagerecord"
# The names Django gave them in 0001 (the same on PostgreSQL and SQLite).
DROPPED = {
    "billing_usagerecord_tenant_id_2f1db001": "tenant_id",
    "billing_usagerecord_api_key_id_4ed5f4fb": "api_key_id",
    "billing_usagerecord_request_id_21a19607": "request_id",
}
LIKE = "billing_usagerecord_request_id_21a19607_like"


def drop(apps, schema_editor):
    qn = schema_editor.quote_name
    for name in (*DROPPED, LIKE):
        schema_editor.execute(f"DROP INDEX IF EXISTS {qn(name)}")


def restore(apps, schema_editor):
    qn = schema_editor.quote_name
    for name, column in DROPPED.items():
        schema_editor.execute(f"CREATE INDEX {qn(name)} ON {qn(TABLE)} ({qn(column)})")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX {qn(LIKE)} ON {qn(TABLE)} ({qn('request_id')} varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_allow_lists_fail_closed"),
        ("billing", "0005_budgetalert"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name="usagerecord",
            index=models.Index(fields=["request_id"], name="billing_usage_request_id"),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="usagerecord",
                    name="api_key",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="usage_records",
                        to="accounts.apikey",
                    ),
                ),
                migrations.AlterField(
                    model_name="usagerecord",
                    name="request_id",
                    field=models.CharField(max_length=128),
                ),
                migrations.AlterField(
                    model_name="usagerecord",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="usage_records",
                        to="accounts.tenant",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(drop, restore)],
        ),
    ]
