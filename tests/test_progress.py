"""What a run shows while stages run: elapsed times, and a training job's epochs as one updating line
(issue 18) rather than a line of metrics per epoch."""

from __future__ import annotations

import io

from lhorch.jobs import progress
from lhorch.orchestrator.core.status import StageStatus
from lhorch.orchestrator.execution.logs import shown
from lhorch.orchestrator.execution.progress import LiveReporter, PlainReporter


def epoch_lines(epochs: int, prefix: str = "") -> list[str]:
    out = io.StringIO()
    for e in range(1, epochs + 1):
        progress.report(e, epochs, {"val_acc": 0.5 + e / 10, "train_loss": 1.0 / e}, stream=out)
    return [prefix + line for line in out.getvalue().splitlines()]


def test_progress_lines_round_trip_and_survive_a_ray_prefix():
    line = epoch_lines(3)[-1]
    assert line.startswith(progress.MARK)
    p = progress.parse("(RayTrainWorker pid=4242) " + line)  # how Ray Train forwards a worker's output
    assert p is not None and (p.epoch, p.epochs) == (3, 3)
    assert p.describe() == "epoch 3/3 · val_acc 0.8 · train_loss 0.3333"
    for other in ("epoch 3 done", progress.MARK + "{not json", progress.MARK + '{"epoch": 1}', ""):
        assert progress.parse(other) is None


def test_plain_reporter_prints_short_progress_and_each_stage_time():
    out = io.StringIO()
    r = PlainReporter(out)
    r.stage("finetune", StageStatus.RUNNING)
    r.log("finetune", "resuming from step 50")
    for line in epoch_lines(2, prefix="(RayTrainWorker pid=1) "):
        r.log("finetune", line)
    r.stage("finetune", StageStatus.SUCCEEDED)
    r.stage("distill", StageStatus.CACHED)
    text = out.getvalue()
    assert "finetune | resuming from step 50" in text  # the stage's own lines as they are
    assert "finetune | epoch 1/2 · val_acc 0.6 · train_loss 1" in text
    assert "finetune | epoch 2/2 · val_acc 0.7 · train_loss 0.5" in text
    assert progress.MARK not in text
    assert "● finetune: succeeded in 0." in text  # elapsed, formatted as 0.0s
    assert "● distill: cached\n" in text  # nothing ran: no time


def test_live_reporter_keeps_one_updating_line_per_stage():
    out = io.StringIO()
    r = LiveReporter(["pretrain", "finetune"], out)
    r.stage("pretrain", StageStatus.SUCCEEDED)  # from an earlier run: never ran here, so no time
    r.stage("finetune", StageStatus.RUNNING)
    r.log("finetune", "a line of the job's own")
    for line in epoch_lines(15):
        r.log("finetune", line)
    assert r.rows["finetune"][2] == "epoch 15/15 · val_acc 2 · train_loss 0.06667"
    r.stage("finetune", StageStatus.SUCCEEDED)
    assert r.clocks.elapsed("finetune") is not None and r.clocks.elapsed("pretrain") is None
    r.close()
    text = out.getvalue()
    assert "finetune | a line of the job's own" in text
    assert progress.MARK not in text
    # The final table holds the last epoch and the stage's time; earlier epochs were never printed as lines.
    assert "epoch 15/15" in text and "epoch 14/15" not in text
    row = next(line for line in text.splitlines() if line.startswith("finetune ") and "succeeded" in line)
    assert "0.0s" in row or "0.1s" in row


def test_ray_train_workers_progress_reaches_the_terminal_and_its_metric_dicts_do_not():
    # What a fine-tune under Ray Train (engine ray) forwards to the driver, per epoch.
    worker = "(RayTrainWorker pid=21641) "
    noise = [worker + "Reporting training result 3: TrainingReport(checkpoint=None, metrics={'epoch': 3, "
                      "'val_acc': 0.81}, validation=False) from rank 0",
             worker + "Setting up process group for: env:// [rank=0, world_size=1]",
             worker + "Moving model to device: cpu",
             worker + "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/tmp/x)"]
    assert [shown(line) for line in noise] == [None] * len(noise)
    line = shown(worker + epoch_lines(3)[-1])
    assert line is not None and progress.parse(line).describe() == "epoch 3/3 · val_acc 0.8 · train_loss 0.3333"
