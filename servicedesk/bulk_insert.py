"""Many new rows of one table written with one statement, the fastest way the database has:
on PostgreSQL a COPY, the keys drawn from the table's sequence first (one query); elsewhere,
and for a few rows (where the second round trip costs more than it saves), Django's
`bulk_create` (one multi-row INSERT ... RETURNING).

Why not `bulk_create` on PostgreSQL too: Django builds the multi-row INSERT in Python (every
field of every row prepared, compiled into SQL) and psycopg's client-side binding then splits
that statement to quote thousands of parameters into it; for a chunk of incoming emails that
was most of what the import spent writing (issue 15's profile: the outbox's INSERT alone, its
binary columns keeping Django from `UNNEST`, 27 ms a chunk). COPY sends the rows as data,
formatted by psycopg's C code.

What `bulk_create` does that the rows need is done here too: foreign keys read from the
objects they point at (saved earlier in the same transaction), `auto_now`/`auto_now_add` and
file fields through their `pre_save`, and the rows marked as saved. No signals, as with
`bulk_create`. Errors arrive as Django's (IntegrityError for a unique clash).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from django.db import connections, models, router
from django.db.backends.base.base import BaseDatabaseWrapper

# Fewer rows than this go in one INSERT: a pass of a 5-email mailbox (a thousand mailboxes
# polled) then costs one statement a table, not two.
COPY_MIN_ROWS = 20


def insert_rows(rows: Sequence[models.Model]) -> None:
    """Insert new rows of one model; their keys are set on them."""
    if not rows:
        return
    model = type(rows[0])
    connection = connections[router.db_for_write(model)]
    if len(rows) < COPY_MIN_ROWS or connection.vendor != "postgresql" or not _copyable(model):
        model._default_manager.bulk_create(rows)
        return
    _copy_rows(connection, model, rows)


def _copyable(model: type[models.Model]) -> bool:
    """A plain table whose columns all come from Python: no parents (multi-table
    inheritance), no defaults or values computed by the database."""
    opts = model._meta
    return not opts.parents and not any(
        field.generated or field.has_db_default() for field in opts.local_concrete_fields
    )


def _copy_rows(
    connection: BaseDatabaseWrapper, model: type[models.Model], rows: Sequence[models.Model]
) -> None:
    opts = model._meta
    quote = connection.ops.quote_name
    fields = list(opts.local_concrete_fields)
    for row in rows:
        # As bulk_create: a foreign key set to an object saved since is read from it now.
        row._prepare_related_fields_for_save(operation_name="insert_rows")
    without_key = [row for row in rows if row.pk is None]
    columns = _columns(model)
    sql = f"COPY {quote(opts.db_table)} ({', '.join(quote(f.column) for f in fields)}) FROM STDIN"
    started = time.monotonic()
    with connection.cursor() as cursor, connection.wrap_database_errors:
        if without_key:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                [quote(opts.db_table), opts.pk.column, len(without_key)],
            )
            for row, (key,) in zip(without_key, cursor.fetchall(), strict=True):
                row.pk = key
        values = [[column(row, connection) for column in columns] for row in rows]
        with cursor.cursor.copy(sql) as copy:
            for each in values:
                copy.write_row(each)
    _log(connection, sql, started, len(rows))
    for row in rows:
        row._state.adding = False
        row._state.db = connection.alias


Column = Callable[[models.Model, BaseDatabaseWrapper], Any]

# Django's own field classes whose preparation hands a value of these exact types back as it
# is (CharField.to_python(str) is the str, IntegerField's int() of an int the int; None is
# None for all of them): such values skip the calls, which were a third of the writes' time
# for a chunk (issue 15's profile). Subclasses may prepare differently and take the long way.
_PASSED_THROUGH: dict[type[models.Field], tuple[type, ...]] = {
    models.CharField: (str,),
    models.TextField: (str,),
    models.BooleanField: (bool,),
    **{
        kind: (int,)
        for kind in (
            models.AutoField,
            models.BigAutoField,
            models.SmallAutoField,
            models.IntegerField,
            models.BigIntegerField,
            models.SmallIntegerField,
            models.PositiveIntegerField,
            models.PositiveBigIntegerField,
            models.PositiveSmallIntegerField,
        )
    },
}


@cache
def _columns(model: type[models.Model]) -> list[Column]:
    """How each column's value is read off a row, as Django's INSERT prepares it."""
    return [_column(field) for field in model._meta.local_concrete_fields]


def _column(field: models.Field) -> Column:
    kind = type(field.target_field) if type(field) is models.ForeignKey else type(field)
    plain = _PASSED_THROUGH.get(kind)
    if plain is not None and type(field).pre_save is models.Field.pre_save:
        attname = field.attname

        def plain_value(row: models.Model, connection: BaseDatabaseWrapper) -> Any:
            value = getattr(row, attname)
            if value is None or type(value) in plain:
                return value
            return field.get_db_prep_save(value, connection)

        return plain_value
    if type(field) is models.DateTimeField:

        def moment(row: models.Model, connection: BaseDatabaseWrapper) -> Any:
            value = field.pre_save(row, True)
            # PostgreSQL takes an aware datetime as it is; a naive one is made aware (with
            # Django's warning) by the long way.
            if value is None or (type(value) is datetime and value.tzinfo is not None):
                return value
            return field.get_db_prep_save(value, connection)

        return moment

    def prepared(row: models.Model, connection: BaseDatabaseWrapper) -> Any:
        return field.get_db_prep_save(field.pre_save(row, True), connection)

    return prepared


def _log(connection: BaseDatabaseWrapper, sql: str, started: float, count: int) -> None:
    """Into Django's query log when it keeps one (DEBUG, tests counting statements), as
    its cursor does for the statements it runs."""
    if connection.queries_logged:
        connection.queries_log.append(
            {"sql": f"{sql} -- {count} rows", "time": f"{time.monotonic() - started:.3f}"}
        )
