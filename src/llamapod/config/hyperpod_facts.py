"""What botocore's data says HyperPod accepts: instance types, deep health checks, regions.

The AWS SDK validates requests with the same data, so the ``[cluster]`` rules follow each
botocore release instead of a list kept in this project.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

from llamapod.aws_names import PARTITIONS


def _read_botocore_facts() -> dict[str, list[str]]:
    import botocore.session

    session = botocore.session.get_session()
    model = session.get_service_model("sagemaker")
    regions: set[str] = set()
    for partition in PARTITIONS:
        regions.update(session.get_available_regions("sagemaker", partition_name=partition))
    return {
        "instance_types": list(model.shape_for("ClusterInstanceType").enum),
        "deep_health_checks": list(model.shape_for("DeepHealthCheckType").enum),
        "regions": sorted(regions),
    }


@lru_cache(maxsize=None)
def botocore_facts() -> dict[str, list[str]]:
    """What botocore's data says about HyperPod, cached per botocore version.

    Reading it means parsing the SageMaker service model and the endpoint data (megabytes
    of JSON, most of a second); the installed botocore only changes with its version, so
    the few hundred bytes llamapod needs are kept under the cache folder.
    """
    from importlib.metadata import version

    from llamapod.paths import cache_dir

    path = cache_dir() / f"botocore-facts-{version('botocore')}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    facts = _read_botocore_facts()
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(facts), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home only costs the next run the same parse
    return facts


def hyperpod_instance_types() -> tuple[str, ...]:
    """Instance types HyperPod accepts: the ClusterInstanceType enum of the service model."""
    return tuple(botocore_facts()["instance_types"])


def deep_health_check_types() -> tuple[str, ...]:
    return tuple(botocore_facts()["deep_health_checks"])


def known_regions() -> frozenset[str]:
    """Regions where botocore's endpoint data lists SageMaker, across public partitions."""
    return frozenset(botocore_facts()["regions"])
