"""Which data each host of a multi-host job reads (no MXNet needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gluonseg.data.channels import IMAGE_EXTENSIONS, MASK_EXTENSIONS, Sample, pair_channel, shown_name, visible_files
from gluonseg.environment import ResourceConfig
from gluonseg.errors import ClientError, list_with_limit


def host_index(resources: ResourceConfig) -> int:
    """This host's position in the sorted host list: its worker index and data shard."""
    return resources.hosts.index(resources.current_host)


def split_for_host(samples: Sequence[Any], distribution: str, resources: ResourceConfig) -> list[Any]:
    """The samples this host trains or validates on.

    ShardedByS3Key: SageMaker already gave each host its own objects, so all of them. FullyReplicated: every
    host holds everything, so host i of n takes samples i, i+n, i+2n, ... of the sorted list (disjoint, and
    together they cover the set).
    """
    if distribution == "ShardedByS3Key":
        return list(samples)
    return list(samples)[host_index(resources) :: len(resources.hosts)]


def pair_host_shard(image_dir: Path, mask_dir: Path) -> list[Sample]:
    """Pairing for an image channel sharded by S3 key: this host holds only its share of the images, so
    masks without an image are expected (e.g. a FullyReplicated annotation channel); an image without a
    mask is still an error."""
    images, _ = visible_files(image_dir, IMAGE_EXTENSIONS) if image_dir.is_dir() else ({}, [])
    masks, _ = visible_files(mask_dir, MASK_EXTENSIONS) if mask_dir.is_dir() else ({}, [])
    if not images or not masks:
        return pair_channel(image_dir, mask_dir)  # its messages for missing or empty channels
    lonely = sorted(set(images) - set(masks))
    if lonely:
        raise ClientError(
            f"{len(lonely)} image(s) in '{image_dir.name}' (ShardedByS3Key) have no mask of the same name in "
            f"'{mask_dir.name}' on this host: "
            + list_with_limit([shown_name(image_dir, images[k]) for k in lonely])
            + ". Shard only the image channels and keep the annotation channels FullyReplicated, so every "
            "host holds the masks of its images"
        )
    return [Sample(key, images[key], masks[key]) for key in sorted(images)]
