"""Entry point for spark-submit and Databricks: parse arguments, run one sync, exit.

spark-submit jobs/ometria_sync.py --config conf/example.yaml [--streams a,b] [--full-refresh]
"""

from ometria_spark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
