"""Build the providers a pipeline's `cloud:` section names. The core calls this and never imports
a cloud SDK itself: the AWS provider's module (which needs boto3) is imported only when asked for."""

from __future__ import annotations

from lhorch.orchestrator.core.spec import Cloud
from lhorch.orchestrator.state.store import Store
from lhorch.providers.base import Provider
from lhorch.providers.ray_cluster import RayClusterProvider


def providers_for(store: Store, cloud: Cloud) -> dict[str, Provider]:
    if cloud.provider == "none":
        return {}
    if cloud.provider == "ray":
        return {"ray": RayClusterProvider.from_config(cloud, store)}
    if cloud.provider == "aws":
        # Deferred: the AWS provider imports boto3 and botocore (~0.5 s), which only AWS pipelines need.
        from lhorch.providers.aws.provider import AwsProvider

        return {"aws": AwsProvider.from_cloud(cloud, store)}
    raise ValueError(f"unknown provider {cloud.provider!r}")
