"""Skeleton datasets as Parquet shards: schema, reading and writing, synthetic data, transforms, splits."""

from partkd.data.protocols import PROTOCOLS, split_filter, split_ray_filter
from partkd.data.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    Sample,
    ShardChecksumError,
    ShardDataError,
    ShardError,
    ShardSchemaError,
)
from partkd.data.shards import DatasetWriter, iter_batches, iter_samples, load_info, shard_paths
from partkd.data.validate import ValidationReport, validate_dataset

__all__ = [
    "PROTOCOLS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "DatasetWriter",
    "Sample",
    "ShardChecksumError",
    "ShardDataError",
    "ShardError",
    "ShardSchemaError",
    "ValidationReport",
    "iter_batches",
    "iter_samples",
    "load_info",
    "shard_paths",
    "split_filter",
    "split_ray_filter",
    "validate_dataset",
]
