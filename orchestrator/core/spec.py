"""The pipeline file: its pydantic models. Loading from YAML with line-aware errors is in loader.py.

Every model forbids unknown fields so that a typo is reported, and every field has a description,
which becomes the JSON Schema that `lhorch schema` prints for editors.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from lhorch.orchestrator.core.durations import parse_duration
from lhorch.orchestrator.core.policy_name import PolicyName

__all__ = ["Budget", "CacheSettings", "Cloud", "Duration", "Hints", "Notify", "Pipeline", "PolicyConfig", "PolicyName",
           "Promotion", "Resources", "Schedule", "Stage"]

NAME_RE = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
Placement = Literal["auto", "local", "cloud"]


class Model(BaseModel):
    # defer_build: schemas are built when a pipeline is first validated, once, inside Pipeline's, rather
    # than for every model at import (issue 18: ~30 ms less for `lhorch validate`, all of it for `lhorch runs`).
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


# A duration is written as seconds or as "30m", "4h", "1h30m"; it is held as seconds.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^(\d+(\.\d+)?[smhd])+$"},
    ]}),
]


class Resources(Model):
    """What one run of a stage needs. ``nodes`` is how many machines it spans; every other figure is per
    node: ``{nodes: 2, cpus: 4, gpus: 1}`` is two machines with four CPUs and a GPU each (issue 14)."""

    nodes: int = Field(
        1, ge=1, le=64,
        description="Machines the stage spans (a multi-node Ray cluster in the cloud); the other resources are "
                    "per node. More than 1 needs a cloud (placement auto or cloud) and at most cloud.max_instances.",
    )
    cpus: float = Field(1.0, gt=0, description="CPU cores the stage needs on each node (fractions allowed).")
    gpus: int = Field(0, ge=0, description="Whole GPUs the stage needs on each node.")
    memory_gb: float = Field(1.0, gt=0, description="Peak RAM in GiB on each node.")
    gpu_memory_gb: float | None = Field(None, gt=0, description="Peak memory per GPU in GiB, if known.")
    disk_gb: float = Field(1.0, ge=0, description="Scratch disk in GiB on each node, artifacts included.")


class Hints(Model):
    """What the stage author knows about its cost; the planner's estimates start from these."""

    minutes: float | None = Field(
        None, gt=0,
        description="About how long the stage takes on the local machine, in minutes.",
    )
    minutes_on: dict[str, float] = Field(
        default_factory=dict,
        description='Observed minutes on named hardware, e.g. {t4: 40, cpu: 300}; keys are GPU models or "cpu".',
    )
    gflops: float | None = Field(None, gt=0, description="Total work in GFLOP (e.g. 6 x params x tokens for training).")
    samples: int | None = Field(None, gt=0, description="Training samples per epoch.")
    epochs: int | None = Field(None, gt=0, description="Epochs over the samples.")
    input_gb: float = Field(0.0, ge=0, description="Size of the stage's inputs when they are not yet known from a run.")
    output_gb: float = Field(0.0, ge=0, description="Size of the stage's outputs when not yet known from a run.")
    checkpoint_minutes: float = Field(
        10.0, gt=0,
        description="Minutes between checkpoints; bounds what a spot interruption loses.",
    )


class CacheSettings(Model):
    """Which files of the pipeline's folder are a `run:` stage's code, for its cache key (issue 20)."""

    include: list[str] = Field(
        default_factory=list,
        description="Globs (relative to the pipeline file's folder, e.g. `src/**/*.py`) of the files that are "
                    "this stage's code; empty: every file of the folder that is shipped to a cloud node.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Globs of files in the folder that do not change this stage's results (data it writes, "
                    "notes); a folder name excludes everything under it.",
    )


def secret_names(names: list[str]) -> list[str]:
    """A ``secrets:`` list: environment variable names, not lhorch's own, each once."""
    for name in names:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ValueError(f"secret {name!r} is not a valid environment variable name")
        if name.startswith("LHORCH_"):
            raise ValueError(f"secret {name!r}: names starting with LHORCH_ are set by lhorch")
    if len(set(names)) != len(names):
        raise ValueError("a secret is named twice")
    return names


class Stage(Model):
    uses: str | None = Field(None, description="A built-in job, e.g. jobs.finetune. Exactly one of `uses` and `run`.")
    run: str | None = Field(
        None,
        description="A shell command to run where the stage is placed. Exactly one of `uses` and `run`.",
    )
    with_: dict[str, Any] = Field(
        default_factory=dict, alias="with",
        description="Parameters of the built-in job in `uses`.",
    )
    needs: list[str] = Field(
        default_factory=list,
        description="Stages that must finish first; their outputs become this stage's inputs.",
    )
    resources: Resources = Field(default_factory=Resources, description="What one run of the stage needs.")
    placement: Placement = Field("auto", description="auto lets the policy decide; local or cloud pins the stage.")
    retries: int = Field(0, ge=0, le=20, description="How many times a failed attempt is retried.")
    timeout: Duration | None = Field(
        None,
        description="Longest a single attempt may run (e.g. 30m); then it is stopped and fails.",
    )
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Named inputs: `stage.output` for another stage's artifact, or a path to a file or folder "
                    "(relative to the pipeline file).",
    )
    outputs: list[str] = Field(
        default_factory=list,
        description="Artifact names the stage writes under $LHORCH_OUTPUT_DIR/<name>.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables for the stage's process.")
    secrets: list[str] = Field(
        default_factory=list,
        description="Names of environment variables read from the launching machine's environment and given to "
                    "the stage; their values are masked in logs and never stored by lhorch.")
    hints: Hints = Field(default_factory=Hints, description="Size and time hints for the planner.")
    budget_usd: float | None = Field(None, gt=0, description="Optional cap in USD on this stage's cloud spend.")
    cache: bool | CacheSettings = Field(
        True,
        description="Reuse this stage's outputs from any earlier run with the same cache key (its spec, its "
                    "inputs' content and its code: for `run:` the folder's files, for `uses:` lhorch's version). "
                    "`false`: always run it; `{include: [...], exclude: [...]}`: which files are its code.",
    )


    @field_validator("needs")
    @classmethod
    def _unique_needs(cls, needs: list[str]) -> list[str]:
        seen: set[str] = set()
        dup = sorted({n for n in needs if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
        if dup:
            raise ValueError(f"lists {', '.join(dup)} more than once")
        return needs

    @field_validator("outputs")
    @classmethod
    def _output_names(cls, outputs: list[str]) -> list[str]:
        for name in outputs:
            if not re.match(NAME_RE, name):
                raise ValueError(f"output name {name!r} must start with a letter and hold only letters, digits, _ or -")
        if len(set(outputs)) != len(outputs):
            raise ValueError("an output name appears twice")
        return outputs

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        return secret_names(names)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key.startswith("LHORCH_"):
                raise ValueError(f"{key!r}: names starting with LHORCH_ are set by lhorch")
        return env

    @model_validator(mode="after")
    def _one_action(self) -> Stage:
        if (self.uses is None) == (self.run is None):
            raise ValueError("a stage needs exactly one of `uses` (a built-in job) or `run` (a command)")
        if self.run is not None and self.with_:
            raise ValueError("`with` gives parameters to a built-in job; a `run` command takes none")
        if self.run is not None and not self.run.strip():
            raise ValueError("`run` is empty")
        return self


class Budget(Model):
    max_usd: float | None = Field(None, gt=0, description="Hard cap in USD for one run, all cloud spend included.")
    monthly_max_usd: float | None = Field(
        None, gt=0,
        description="Cap in USD across all runs of this pipeline in a calendar month.",
    )
    alert_fraction: float = Field(0.8, gt=0, le=1, description="Warn when this fraction of a cap is spent.")
    check_interval: Duration = Field(
        30.0,
        description="How often the budget watchdog checks spend while cloud work runs.",
    )


# Outcomes of a scheduled run that can notify (a subset of lhorch.orchestrator.core.status.FireStatus).
NotifyOn = Literal["failed", "budget_exceeded", "not_promoted", "succeeded", "skipped"]
NOTIFY_BY_DEFAULT: tuple[NotifyOn, ...] = ("failed", "budget_exceeded", "not_promoted")


class Notify(Model):
    webhook_env: str | None = Field(
        None,
        description="Name of the environment variable that holds a Slack-compatible webhook URL "
                    "(the URL itself never goes in the file).",
    )
    desktop: bool = Field(True, description="Show a desktop notification where the system has one.")
    on: list[NotifyOn] = Field(
        default_factory=lambda: list(NOTIFY_BY_DEFAULT),
        description="Which outcomes of a scheduled run notify.",
    )


class Promotion(Model):
    metric: str = Field("f1_macro", description="Metric in the evaluation's metrics.json that decides promotion.")
    mode: Literal["max", "min"] = Field("max", description="Whether larger or smaller values of the metric are better.")
    min_delta: float = Field(
        0.0,
        description="How much better than the current model a new one must be (0: at least as good).",
    )
    stage: str | None = Field(
        None,
        description="Stage whose `model` output is registered; default: the stage that writes metrics.",
    )


class Schedule(Model):
    cron: str = Field(..., description='Cron expression, e.g. "0 2 * * *" for 02:00 every night.')
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in, e.g. Europe/Berlin.")
    overlap: Literal["skip", "queue"] = Field(
        "skip",
        description="When a run is still going at the next fire time: skip it or queue it.",
    )
    catchup: Literal["once", "skip"] = Field(
        "once",
        description="Runs missed while the machine slept: run once on wake, or skip them.",
    )
    only_if_changed: bool = Field(
        True,
        description="Skip a scheduled run when no stage's inputs changed since the last run.",
    )
    promote: Promotion | None = Field(None, description="Promotion gate for the model this pipeline produces.")
    notify: Notify = Field(
        default_factory=Notify,
        description="Who hears about failed, budget-stopped or not-promoted runs.",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        if len(cron.split()) not in (5, 6):
            raise ValueError(f"{cron!r} is not a cron expression (5 fields: minute hour day month weekday)")
        # Checked here, not first when the scheduler fires (issue 17): "61 25 * * *" has no minute 61.
        # Six fields put seconds first, as lhorch.orchestrator.scheduling.cron reads them.
        from croniter import croniter  # deferred: only files with a `schedule:` pay for its import

        if not croniter.is_valid(cron, second_at_beginning=len(cron.split()) == 6):
            raise ValueError(f"{cron!r} is not a valid cron expression: minute 0-59, hour 0-23, day 1-31, "
                             "month 1-12, weekday 0-6")
        return cron

    @field_validator("timezone")
    @classmethod
    def _tz(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except Exception:  # ZoneInfoNotFoundError or a malformed key
            raise ValueError(f"unknown time zone {tz!r}; use an IANA name such as Europe/Berlin") from None
        return tz


class Cloud(Model):
    provider: Literal["aws", "ray", "none"] = Field(
        "none",
        description="aws starts Ray clusters on EC2; ray uses an existing cluster at `address`; "
                    "none keeps everything local.",
    )
    region: str | None = Field(None, description="AWS region; default from the AWS profile or environment.")
    profile: str | None = Field(None, description="AWS named profile to use.")
    spot: bool = Field(True, description="Allow spot instances where the policy finds them cheaper.")
    address: str | None = Field(
        None,
        description="For provider ray: the cluster's Jobs address, e.g. http://10.0.0.5:8265.",
    )
    token_env: str = Field(
        "LHORCH_RAY_TOKEN",
        description="Environment variable that holds the remote cluster's Ray token.",
    )
    token_file: str | None = Field(
        None,
        description="File that holds the remote cluster's Ray token (instead of token_env).",
    )
    bucket: str | None = Field(None, description="S3 bucket for artifacts; lhorch creates a private one when unset.")
    prefix: str = Field("lhorch", description="Key prefix for this pipeline's artifacts in the bucket.")
    instance_types: list[str] = Field(
        default_factory=list,
        description="Only consider these instance types (empty: the whole catalogue).",
    )
    max_instances: int = Field(4, ge=1, le=64, description="Most instances one cluster may have.")
    idle_minutes: float = Field(
        10.0, gt=0,
        description="Dead-man switch: instances terminate themselves after this long without a check-in.",
    )
    max_hours: float = Field(
        12.0, gt=0,
        description="Hard stop: instances terminate themselves this long after launch at the latest.",
    )
    connector: Literal["ssm", "direct"] = Field(
        "ssm",
        description="How lhorch reaches a cluster's head: ssm (Session Manager port forward, no inbound port) or "
                    "direct (the head's private address is routable from here: VPN, peered VPC).",
    )
    ami: str | None = Field(None, description="Image id for every node; default: the latest Amazon Linux 2023.")
    subnet_ids: list[str] = Field(
        default_factory=list,
        description="Subnets to launch in (accounts without a default VPC); default: the default VPC's.",
    )
    security_group_ids: list[str] = Field(
        default_factory=list,
        description="Security groups of your own attached to every node besides lhorch's (e.g. VPN access for direct).",
    )

    @model_validator(mode="after")
    def _address(self) -> Cloud:
        if self.provider == "ray" and not self.address:
            raise ValueError("provider ray needs `address`, the cluster's Jobs address")
        return self


class PolicyConfig(Model):
    name: PolicyName = Field(PolicyName.BALANCED, description=" | ".join(PolicyName) + ".")
    value_of_time_usd_per_hour: float = Field(
        2.0, ge=0, description="For balanced: what one hour of waiting is worth to you, in USD.",
    )
    electricity_usd_per_hour: float = Field(
        0.0, ge=0,
        description="Cost of running the local machine per hour, if you want it counted.",
    )


class Pipeline(Model):
    name: str = Field(..., pattern=NAME_RE, description="Pipeline name; runs, schedules and models are filed under it.")
    description: str | None = Field(None, description="Free text.")
    policy: PolicyConfig = Field(
        default_factory=PolicyConfig,
        description="Placement policy: a name, or a mapping with `name` and its options.",
    )
    budget: Budget | None = Field(None, description="Spending caps.")
    schedule: Schedule | None = Field(None, description="When to run this pipeline by itself (see `lhorch schedule`).")
    deadline: Duration | None = Field(None, description="Latest acceptable finish, from the start of a run (e.g. 4h).")
    cloud: Cloud = Field(default_factory=Cloud, description="Where cloud stages run.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables for every stage.")
    secrets: list[str] = Field(
        default_factory=list, description="Secrets (see a stage's `secrets`) every stage receives.")
    stages: dict[str, Stage] = Field(..., min_length=1, description="The stages, by name; order comes from `needs`.")


    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        return secret_names(names)

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, stages: dict[str, Stage]) -> dict[str, Stage]:
        for name in stages:
            if not re.match(NAME_RE, name):
                raise ValueError(f"stage name {name!r} must start with a letter and hold only letters, digits, _ or -")
        return stages
