"""ometria-spark: Ometria's REST API and S3 email-event exports into Delta Lake tables."""

__version__ = "0.1.0"
