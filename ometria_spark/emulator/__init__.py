"""A local stand-in for Ometria: a seeded data set, its REST API and its S3 export files.

Used by the demo, the tests and the benchmarks; it listens on loopback only.
"""

from ometria_spark.emulator.dataset import Dataset
from ometria_spark.emulator.exports import export_files, write_local, write_s3
from ometria_spark.emulator.server import EmulatorServer, RequestRecord

__all__ = [
    "Dataset",
    "EmulatorServer",
    "RequestRecord",
    "export_files",
    "write_local",
    "write_s3",
]
