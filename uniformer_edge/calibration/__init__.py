"""Video data: the built-in synthetic temporal benchmark, loaders for the datasets users hold,
the official test-time pipeline and calibration sets."""

from .calib import CalibrationSet, calibration_set, stratified_indices
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import REVERSED_CLASS, SyntheticMotion
from .transforms import MEAN, STD, center_crop, normalize, resize_short_side, sample_indices
from .video import VideoDataset, read_annotations, read_class_names
from .data import build_dataset

__all__ = [
    "SyntheticMotion",
    "SYNTHETIC_CLASSES",
    "REVERSED_CLASS",
    "VideoDataset",
    "read_annotations",
    "read_class_names",
    "CalibrationSet",
    "calibration_set",
    "stratified_indices",
    "build_dataset",
    "MEAN",
    "STD",
    "normalize",
    "sample_indices",
    "resize_short_side",
    "center_crop",
]
