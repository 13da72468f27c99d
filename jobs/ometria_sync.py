"""Entry point for spark-submit and Databricks: parse arguments, run one command, exit.

spark-submit jobs/ometria_sync.py [sync] --config conf/example.yaml [--streams a,b] [--full-refresh]
spark-submit jobs/ometria_sync.py maintain --config conf/example.yaml
spark-submit jobs/ometria_sync.py erase --config conf/example.yaml --email ADDRESS --profile-id ID
"""

from ometria_spark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
