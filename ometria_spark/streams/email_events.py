"""Email events: the files of Ometria's self-serve export (``ometria_spark.exports``)."""

from __future__ import annotations

from ometria_spark.streams import FileStream

STREAM = FileStream(name="email_events", order=50)
