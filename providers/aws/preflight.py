"""Before anything starts: is the AWS region one EC2 has, and are there credentials at all?

Regions come from botocore's bundled endpoint data, read as JSON so that `lhorch validate` answers
without importing botocore's session machinery (about 0.5 s); tests compare the list with
``boto3.session.Session().get_available_regions("ec2")`` across partitions. The credential check
makes no AWS call: boto3's provider chain finds credentials or returns None locally (the instance
metadata lookup at its end is skipped with AWS_EC2_METADATA_DISABLED=true).
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from lhorch.orchestrator.core.errors import CloudError

CREDENTIALS_HINT = ("Configure AWS credentials (`aws configure`, AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY), or pin the cloud stages to local (placement: local) or set "
                    "cloud.provider: none.")


@lru_cache(maxsize=1)
def ec2_regions() -> frozenset[str]:
    """Every region of every partition (aws, aws-cn, aws-us-gov, …) that botocore knows EC2 in; empty
    when botocore is not installed (then nothing is refused)."""
    spec = importlib.util.find_spec("botocore")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "endpoints.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    regions: set[str] = set()
    for partition in data.get("partitions", []):
        regions.update(partition.get("regions", {}))
        for name, endpoint in partition.get("services", {}).get("ec2", {}).get("endpoints", {}).items():
            # botocore also lists FIPS and dual-stack variants as endpoints; only regions are names users pick.
            if "fips" not in name and not endpoint.get("deprecated"):
                regions.add(name)
    return frozenset(regions)


def region_problem(region: str) -> str | None:
    """Why ``region`` is not an EC2 region, or None when botocore knows it (or knows no regions)."""
    known = ec2_regions()
    if not known or region in known:
        return None
    return f"unknown AWS region {region!r}"


def require_credentials(region: str | None, profile: str | None) -> str:
    """The region the cloud stages will use; CloudError (exit 5, with a hint) when boto3 finds no
    credentials, the named profile does not exist, or no region is set anywhere."""
    # boto3 is heavy and only the cloud path needs it (docs/layout.md: heavy modules import late).
    import boto3
    import botocore.exceptions  # with boto3: heavy, and only the cloud path needs it

    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
        credentials = session.get_credentials()
    except botocore.exceptions.ProfileNotFound:
        raise CloudError(f"AWS profile {profile!r} (cloud.profile) is not configured",
                         hint="List profiles with `aws configure list-profiles`, or remove cloud.profile.") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise CloudError(f"cannot read AWS credentials: {exc}", hint=CREDENTIALS_HINT) from None
    if credentials is None:
        raise CloudError("no AWS credentials found; the plan places stages on AWS", hint=CREDENTIALS_HINT)
    if not session.region_name:
        raise CloudError("no AWS region: the plan places stages on AWS",
                         hint="Set cloud.region in the pipeline file, or AWS_REGION / the profile's region.")
    problem = region_problem(session.region_name)
    if problem:
        raise CloudError(problem, hint=f"Use one of: {', '.join(sorted(ec2_regions())[:8])}, …")
    return session.region_name


__all__ = ["CREDENTIALS_HINT", "ec2_regions", "region_problem", "require_credentials"]
