"""The Modal column of the architecture: the job core on the shared SQL store, run by Modal's pieces.

    JobStore       SqlJobStore          Postgres (HIDREAM_DATABASE_URL), the same as several nodes'
    Outbox         SqlOutbox            the same database, in the transaction that ends the job
    Executor       SpawnExecutor        Function.spawn per job; request id -> FunctionCall id in SQL
    OutputStorage  VolumeOutputStorage  a v2 modal.Volume mounted in every container, or
                   BucketOutputStorage  an S3 / R2 / GCS bucket mounted there (CloudBucketMount)
    key state      SqlKeyState          signing keys in the database, shared by every container

Nothing here imports `modal`: each piece takes the Modal object (or an in-process stand-in in the
tests) through a small protocol. modal_app.py at the top of the repository does the wiring.
"""
