"""A finished example-like run written straight into a store, for report tests that need no Ray.

The run looks like the digits example's: built-in stages (one on a cloud cluster, retried once), the
outputs those jobs write (history.json, distill's report.json, evaluate's metrics.json and report.png),
a user stage with a metrics JSON holding series, a plan with reasons, and ledger rows.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lhorch.orchestrator.core.plan import Placement, Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.state import ledger
from lhorch.orchestrator.state.store import Store, iso

T0 = datetime(2026, 3, 14, 2, 0, tzinfo=timezone.utc)
SPEC = {
    "name": "digits-like",
    "budget": {"max_usd": 5.0, "monthly_max_usd": 60.0},
    "stages": {
        "preprocess": {"uses": "jobs.preprocess", "placement": "local"},
        "finetune": {"uses": "jobs.finetune", "needs": ["preprocess"], "retries": 1},
        "distill": {"uses": "jobs.distill", "needs": ["finetune"]},
        "evaluate": {"uses": "jobs.evaluate", "needs": ["distill"]},
        "score": {"run": "python score.py", "needs": ["preprocess"], "outputs": ["metrics"]},
    },
}
# stage → [(attempt status, target, cluster, start s, end s, exit code, peak rss MB, peak GPU MB)]
ATTEMPTS = {
    "preprocess": [("succeeded", "local", "local", 0, 12, 0, 210.0, None)],
    "finetune": [("failed", "cloud", "train", 12, 30, 137, 1900.0, 3100.0),
                 ("succeeded", "cloud", "train", 31, 95, 0, 2048.0, 3900.0)],
    "score": [("succeeded", "local", "local", 12, 20, 0, 40.0, None)],
    "distill": [("succeeded", "local", "local", 95, 110, 0, 320.0, None)],
    "evaluate": [("succeeded", "local", "local", 110, 121, 0, 420.0, None)],
}
ESTIMATES = {"preprocess": 0.0, "finetune": 0.40, "score": 0.0, "distill": 0.0, "evaluate": 0.0}
ACTUAL = {"finetune": 0.3125}  # what the cloud cluster cost (instance seconds)
HISTORY = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_acc": 1 - 0.5 / e, "val_acc": 1 - 0.6 / e}
           for e in range(1, 6)]
METRICS = {"accuracy": 0.9528, "precision_macro": 0.9552, "recall_macro": 0.9524, "f1_macro": 0.9527,
           "confusion_matrix": [[5, 1], [0, 6]], "n_test": 360}


def _png(path: Path) -> None:
    import matplotlib  # deferred: only the tests that draw a stand-in for jobs.evaluate's plot need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display in tests

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(METRICS["confusion_matrix"], cmap="Blues")
    ax.set_title("confusion (stand-in for jobs.evaluate)")
    fig.savefig(path, dpi=60)
    plt.close(fig)


def _outputs(run_dir: Path) -> dict[str, dict[str, Path]]:
    def out(stage: str, name: str) -> Path:
        path = run_dir / "stages" / stage / "outputs" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    (out("preprocess", "dataset") / "data.npz").write_bytes(b"x")
    (out("finetune", "model") / "model.pt").write_bytes(b"x")
    (out("finetune", "history") / "history.json").write_text(json.dumps(HISTORY))
    (out("distill", "model") / "model.pt").write_bytes(b"x")
    (out("distill", "report") / "report.json").write_text(json.dumps({"history": HISTORY[:3], "compression": 4.1}))
    metrics = out("evaluate", "metrics")
    (metrics / "metrics.json").write_text(json.dumps(METRICS))
    _png(metrics / "report.png")  # evaluate draws finetune's curves and the confusion matrix here
    score = run_dir / "stages" / "score" / "outputs"
    score.mkdir(parents=True)
    (score / "metrics").write_text(json.dumps({"loss": [0.9, 0.5, 0.3], "score": 0.7}))
    return {"preprocess": {"dataset": out("preprocess", "dataset")},
            "finetune": {"model": out("finetune", "model"), "history": out("finetune", "history")},
            "distill": {"model": out("distill", "model"), "report": out("distill", "report")},
            "evaluate": {"metrics": metrics}, "score": {"metrics": score / "metrics"}}


def plan() -> Plan:
    placements = {
        name: Placement(stage=name, target="cloud" if name == "finetune" else "local",
                        provider="aws" if name == "finetune" else "local",
                        instance_type="g5.xlarge" if name == "finetune" else "local",
                        market="spot" if name == "finetune" else "local", group="train" if name == "finetune" else None,
                        est_seconds=60.0 if name == "finetune" else 10.0, est_cost_usd=ESTIMATES[name],
                        reason=f"reason for {name}")
        for name in SPEC["stages"]
    }
    return Plan(pipeline=SPEC["name"], policy="balanced", placements=placements, budget_usd=5.0)


def finished_run(store: Store, run_id: str = "digits-like-1", t0: datetime = T0) -> str:
    """Write the run into ``store`` and its outputs into its run folder; returns the run id."""
    spec, p = Pipeline.model_validate(SPEC), plan()
    store.create_run(run_id, spec.name, spec, "/tmp/digits-like.yaml", plan=p)
    store.update_run(run_id, status="succeeded", started_at=t0, finished_at=t0 + timedelta(seconds=125))
    paths = _outputs(store.runs_dir(run_id))
    for stage, tries in ATTEMPTS.items():
        for number, (status, target, cluster, start, end, code, rss, gpu) in enumerate(tries, 1):
            attempt = store.start_attempt(run_id, stage, "key", target, cluster)
            store.finish_attempt(attempt, status, exit_code=code, peak_rss_mb=rss, peak_gpu_mb=gpu,
                                 error="exit code 137 (killed)" if status == "failed" else None,
                                 finished_at=iso(t0 + timedelta(seconds=end)))
            with store.tx() as c:  # the store stamps "now"; the fixture wants a fixed past
                c.execute("UPDATE attempts SET started_at=? WHERE id=?", (iso(t0 + timedelta(seconds=start)), attempt))
            log = store.runs_dir(run_id) / "stages" / stage / f"attempt-{number}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{stage} attempt {number}\n")
        for name, path in paths[stage].items():
            store.record_artifact(run_id, stage, name, path, "0" * 64, 1)
    ledger.record_estimate(store, run_id, spec.name, p, at=t0)
    for stage, usd in ACTUAL.items():
        ledger.record(store, run_id, spec.name, stage, "instance", "i-0123", usd * 3600 / 64, 64 / 3600, "hour",
                      "test", t0 + timedelta(seconds=95))
    store.event(run_id, "cluster", "acquired aws:train", address="http://127.0.0.1:18265")
    return run_id
