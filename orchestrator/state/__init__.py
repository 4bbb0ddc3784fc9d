"""The state store: SQLite under $LHORCH_HOME, and the only place in lhorch with SQL.

- ``store``: the connection (WAL, one short transaction per write) and runs, attempts, events, artifacts
- ``migrations``: the schema, append-only, versioned by ``PRAGMA user_version``
- ``ledger``: cost items, estimate vs actual, month to date
- ``history``: what stages were observed to need (for the estimator)
- ``profiles``: the profiler's cached measurements
- ``schedules``: schedules and their fires
- ``models``: the model registry's versions
- ``cloud_resources``: intent/created/released rows of what a provider started in a cloud
- ``cache``: the stage cache's entries (the kept files are in execution/stage_cache.py's object store)
- ``run_views``: read-only queries across runs (money per run, metrics artifacts, stage times) for the report
"""
