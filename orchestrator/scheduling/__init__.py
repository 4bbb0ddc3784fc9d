"""Scheduled retraining: ``cron`` (fire times, DST), ``schedules`` (what a schedule means),
``daemon`` (the process that fires them), ``model_registry`` (versions and the promotion gate),
``notify`` (desktop and webhook notices). Rows are kept in ``lhorch.orchestrator.state``."""
