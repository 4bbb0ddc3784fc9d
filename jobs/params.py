"""Parameter models of the built-in jobs (pydantic only: imported at validate time, without torch).

Every field has a description: it is the `--help` text of the job's command line and the JSON Schema
that editors see. Defaults are chosen so that `uses: jobs.X` with no `with:` runs the digits example.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Engine = Literal["auto", "ray", "torch"]


class Params(BaseModel):
    # Built when first used: `lhorch validate` then pays only for the jobs a pipeline names.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class PreprocessParams(Params):
    dataset: str = Field(
        "digits",
        description="`digits` (scikit-learn's bundled 8x8 digits, no download) or a path to your data: a .csv "
        "whose last column is the label (a header row is detected and skipped), or a .npz with arrays `X` "
        "(samples x features; images are flattened) and `y` (integer or string labels).",
    )
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the data kept for validation.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the data kept for the final test.")
    seed: int = Field(0, description="Seed of the split and of the augmentation.")
    limit: int | None = Field(None, gt=0, description="Keep at most this many samples (stratified); for quick runs.")
    augment: bool = Field(False, description="Add shifted/noisy copies of the training samples (train split only).")
    augment_copies: int = Field(1, ge=1, le=100, description="Augmented copies of each training sample when `augment`.")
    shift_pixels: int = Field(
        1, ge=0, le=3,
        description="Largest random shift in pixels, for square images (e.g. digits).",
    )
    noise_std: float = Field(
        0.05, ge=0,
        description="Std of Gaussian noise added to augmented copies, in units of the feature range.",
    )

    @model_validator(mode="after")
    def _fractions(self) -> PreprocessParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% of the data for training")
        return self


class _Training(Params):
    epochs: int = Field(10, ge=1, le=10_000, description="Passes over the training split.")
    batch_size: int = Field(64, ge=1, description="Samples per forward pass (per worker).")
    lr: float = Field(1e-3, gt=0, description="Learning rate of AdamW.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed of initialisation and data order; the same seed gives the same weights.")


def _hidden(value: object) -> object:
    # Command-line users write `--hidden 128,64`; YAML users write a list.
    if isinstance(value, str):
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    return value


class PretrainParams(_Training):
    epochs: int = Field(15, ge=1, le=10_000, description="Passes over the pretraining subset.")
    hidden: list[int] = Field(
        [128, 64], min_length=1,
        description="Widths of the backbone's hidden layers, e.g. [128, 64].",
    )
    classes: list[int] | None = Field(
        None, description="Label ids used for pretraining (the pretext task); default: the lower half of the classes.",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer.")

    @field_validator("hidden", "classes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _hidden(value)


class FinetuneParams(_Training):
    epochs: int = Field(12, ge=1, le=10_000, description="Passes over the training split.")
    init_checkpoint: str | None = Field(
        None,
        description="Path to a model.pt (or a folder holding one) to start from, instead of the `checkpoint` input.",
    )
    freeze_backbone: bool = Field(
        False,
        description="Train only the new head for the first `freeze_epochs` epochs, then unfreeze.",
    )
    freeze_epochs: int = Field(2, ge=0, description="Epochs with a frozen backbone when `freeze_backbone`.")
    accumulate_steps: int = Field(
        1, ge=1, le=1024,
        description="Batches whose gradients are summed before one optimizer step.",
    )
    precision: Precision = Field(
        "auto",
        description="auto: bf16 (or fp16 with loss scaling) on CUDA, fp32 elsewhere; or force fp32, bf16 or fp16.",
    )
    checkpoint_every: int = Field(50, ge=1, description="Save a resumable checkpoint every this many optimizer steps.")
    keep_checkpoints: int = Field(2, ge=1, description="How many step checkpoints to keep.")
    max_steps: int | None = Field(
        None, ge=1,
        description="Stop after this many optimizer steps (smoke runs, or to simulate an interruption); a later run "
        "in the same output folder resumes from the last checkpoint.",
    )
    num_workers: int = Field(
        1, ge=1, le=256,
        description="Data-parallel Ray Train workers in all, spread evenly over the stage's resources.nodes (a "
                    "multiple of it); each worker gets an equal share of its node's CPUs (and one GPU when the stage "
                    "has GPUs). batch_size is per worker: the global batch is batch_size x num_workers.")
    engine: Engine = Field(
        "auto", description="auto: the in-process loop for one worker, Ray Train for more; "
        "ray: Ray Train TorchTrainer always (scales to num_workers, on a laptop or a cluster); "
        "torch: the same loop in this process without Ray.",
    )

    @model_validator(mode="after")
    def _workers(self) -> FinetuneParams:
        if self.engine == "torch" and self.num_workers != 1:
            raise ValueError("engine torch runs a single worker; use engine ray (or auto) for num_workers > 1")
        return self

    @property
    def resolved_engine(self) -> Literal["ray", "torch"]:
        """What `auto` means: Ray Train only where it buys something. One worker gains nothing from it
        (no data parallelism, and Train's worker restarts are not configured: lhorch's retries resume from
        the step checkpoints instead) and pays its start-up: 30-55 s on a busy 2-core laptop (bench/jobs.py)."""
        if self.engine == "auto":
            return "ray" if self.num_workers > 1 else "torch"
        return self.engine

    @property
    def distributed(self) -> bool:
        """True when the job starts Ray Train workers (jobs/index.py: the runner then reserves no CPU for
        its driver)."""
        return self.resolved_engine == "ray"

    def workers_per_node(self, nodes: int) -> int:
        """`num_workers` is the total over the stage's `resources.nodes`, spread evenly (issue 14)."""
        return -(-self.num_workers // max(nodes, 1))

    def nodes_problem(self, nodes: int, cpus: float, gpus: int) -> tuple[str, str] | None:
        """(field, why) when these parameters cannot use ``nodes`` machines of ``cpus`` and ``gpus`` each."""
        if nodes == 1:
            return None
        if self.num_workers < nodes:
            return "num_workers", (f"{self.num_workers} worker(s) cannot span {nodes} nodes: a node would have none; "
                                   f"use num_workers {nodes} or a multiple of it")
        if self.resolved_engine != "ray":
            return "engine", "engine torch trains in one process on one node; use engine ray or auto"
        if self.num_workers % nodes:
            return "num_workers", (f"{self.num_workers} workers do not split evenly over {nodes} nodes; "
                                   "use a multiple of resources.nodes")
        per = self.workers_per_node(nodes)
        if cpus < per:
            return "num_workers", (f"{per} workers per node need a CPU each, resources.cpus gives {cpus:g} per node")
        if gpus and gpus < per:
            return "num_workers", (f"{per} workers per node need a GPU each, resources.gpus gives {gpus} per node")
        return None


class DistillParams(_Training):
    epochs: int = Field(30, ge=1, le=10_000, description="Passes over the training split.")
    hidden: list[int] = Field(
        [32], min_length=1,
        description="Widths of the student's hidden layers (smaller than the teacher's).",
    )
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the soft targets.")
    alpha: float = Field(
        0.7, ge=0, le=1,
        description="Weight of the soft-target loss; 1 - alpha goes to the true labels.",
    )

    @field_validator("hidden", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _hidden(value)


class CompressParams(Params):
    sparsity: float = Field(
        0.5, ge=0, lt=1,
        description="Share of each Linear layer's weights set to zero (L1 magnitude pruning).",
    )
    recover_epochs: int = Field(
        3, ge=0,
        description="Epochs of training after pruning (zeros kept) to recover accuracy.",
    )
    lr: float = Field(5e-4, gt=0, description="Learning rate of the recovery training.")
    quantize: bool = Field(True, description="Apply dynamic int8 quantization to the Linear layers after pruning.")
    latency_batch: int = Field(256, ge=1, description="Batch size of the latency measurement.")
    latency_repeats: int = Field(50, ge=1, description="Timed forward passes per model (after warm-up).")
    seed: int = Field(0, description="Seed of the recovery training.")


class EvaluateParams(Params):
    split: Literal["test", "val"] = Field("test", description="Which split of the dataset to evaluate on.")
    plot: bool = Field(
        True,
        description="Write metrics/report.png (training curves if a history is given, confusion matrix).",
    )
    batch_size: int = Field(512, ge=1, description="Samples per forward pass.")
