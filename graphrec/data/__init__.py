"""Canonical dataset format, validation, splitting and safe loading."""
from .dataset import (LABELS, MODALITIES, SCHEMA_VERSION, SPLITS, TABLES, Dataset, load_dataset,
                      read_manifest, save_dataset)
from .validate import Violation, find_violations, validate_dataset

__all__ = ["LABELS", "MODALITIES", "SCHEMA_VERSION", "SPLITS", "TABLES", "Dataset", "load_dataset",
           "read_manifest", "save_dataset", "Violation", "find_violations", "validate_dataset"]
