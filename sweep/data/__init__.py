"""Datasets: a name → (index, reader) registry (`registry`), one file per dataset, the clips of a split
(`splits`), decoding (`audio`), the shared cache (`cache`), features and augmentation on the device.

Importing this package registers every dataset.
"""

from sweep.data import esc50, folder, hf, speechcommands, synthetic, urbansound8k  # noqa: F401  (each registers itself)
from sweep.data.registry import DATASETS, DataError, DatasetSpec, Index, Item, data_root
from sweep.data.splits import Clips, check_files, crop, load_split, split_items

__all__ = [
    "DATASETS", "Clips", "DataError", "DatasetSpec", "Index", "Item",
    "check_files", "crop", "data_root", "load_split", "split_items",
]
