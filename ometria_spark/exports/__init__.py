"""Ometria's self-serve email-event export files -> the ``email_events`` Delta table.

Each export file is loaded exactly once: files are discovered under one root (any depth),
compared with the ``_loaded_files`` Delta table, and only new ones are read. A file is
recorded as loaded only after its rows were merged, so a crash in between makes the next
run read it again, which the idempotent MERGE absorbs.

Reading uses explicit all-string schemas (never inference):

- CSV: Spark maps columns by position when given a schema and ignores the header, while
  export files may order or omit columns differently. So the header line of every new
  file is read on the driver, files are grouped by identical header, and each group is
  read once with a positional schema in that header's order. A file without
  ``to_address``, ``event_type`` or ``dt_occurred`` is rejected (reported, quarantined,
  not recorded, so it is retried after it is fixed); the others still load.
- JSON lines: one read with the raw schema; a file where a required column is absent
  from every row is rejected whole in the same way.

Every record gets ``_source_file`` (the file's path as discovered), ``_fetch_order``
(file modification time, path, position in the file: a later file's copy of an event
wins) and ``_raw``: the text of a record that did not parse (``_corrupt_record``), else
NULL; records quarantined for another reason get their raw fields as JSON instead.
"""

from ometria_spark.exports.files import ExportFile, discover, parse_header, read_first_line
from ometria_spark.exports.ledger import LOADED_FILES_SCHEMA, new_files, record_loaded
from ometria_spark.exports.load import EmailEventsResult, event_time_prune, load_email_events
from ometria_spark.exports.reading import (
    FORMATS,
    RAW_FIELDS,
    REQUIRED_FIELDS,
    ExportRead,
    read_export_files,
)

__all__ = [
    "FORMATS",
    "LOADED_FILES_SCHEMA",
    "RAW_FIELDS",
    "REQUIRED_FIELDS",
    "EmailEventsResult",
    "ExportFile",
    "ExportRead",
    "discover",
    "event_time_prune",
    "load_email_events",
    "new_files",
    "parse_header",
    "read_export_files",
    "read_first_line",
    "record_loaded",
]
