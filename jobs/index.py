"""Which built-in jobs exist, their parameter models and the outputs they write.

Only pydantic models are imported here (from jobs/params.py), never torch, so that `lhorch validate`
checks a job's parameters in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from lhorch.jobs import params as p


@dataclass(frozen=True)
class JobInfo:
    name: str  # as written in `uses:`, e.g. jobs.finetune
    params: type[BaseModel]
    outputs: tuple[str, ...]
    summary: str
    # True for jobs that may start their own Ray Train workers; whether one run does depends on its
    # parameters (see runs_distributed).
    distributed: bool = False

    def runs_distributed(self, with_: dict) -> bool:
        """True when a stage with these parameters starts Ray Train workers: the runner then reserves no
        CPU for the job's driver, so that the workers can have the stage's CPUs (and GPUs) on the same
        cluster. A job that trains in its own process (`engine: auto` with one worker) keeps them."""
        if not self.distributed:
            return False
        return bool(getattr(self.params.model_validate(with_ or {}), "distributed", True))

    def nodes_problem(self, with_: dict, nodes: int, cpus: float, gpus: int) -> tuple[str, str] | None:
        """(field under the stage, why) when a stage with these parameters cannot span ``nodes`` machines
        of ``cpus`` and ``gpus`` each; None when it can. A job that trains in one process uses one node."""
        if nodes == 1:
            return None
        check = getattr(self.params.model_validate(with_ or {}), "nodes_problem", None)
        if check is None:
            return "resources.nodes", f"{self.name} runs in one process on one node; leave resources.nodes at 1"
        found = check(nodes, cpus, gpus)
        return None if found is None else (f"with.{found[0]}", found[1])

    @property
    def module(self) -> str:
        """The Python module that runs it: `uses: jobs.X` names lhorch's installed `lhorch.jobs.X`."""
        return "lhorch." + self.name


JOBS: dict[str, JobInfo] = {
    job.name: job
    for job in [
        JobInfo("jobs.preprocess", p.PreprocessParams, ("dataset",),
                "Clean, split (stratified, seeded), augment and normalise digits or your CSV/NPZ."),
        JobInfo("jobs.pretrain", p.PretrainParams, ("checkpoint",),
                "Pretrain an MLP backbone on a subset of the classes (pretext task)."),
        JobInfo("jobs.finetune", p.FinetuneParams, ("model", "history", "checkpoints"),
                "Transfer learning (on Ray Train for several workers): new head, optional frozen backbone, AMP, "
                "accumulation, resume.",
                distributed=True),
        JobInfo("jobs.distill", p.DistillParams, ("model", "report"),
                "Distil a smaller student from the teacher `model` on softened outputs."),
        JobInfo("jobs.compress", p.CompressParams, ("model", "report"),
                "Magnitude pruning and dynamic int8 quantization; size, latency and accuracy before/after."),
        JobInfo("jobs.evaluate", p.EvaluateParams, ("metrics",),
                "Accuracy, macro precision/recall/F1 and confusion matrix on the test split, with a plot."),
    ]
}


def find_job(name: str) -> JobInfo | None:
    return JOBS.get(name)


def job_names() -> list[str]:
    return sorted(JOBS)
