"""Training data: simulators, paired TIFF folders and arrays, normalisation, batches.

Pairs are ``(input (C_in, H, W), target (C_out, H, W))`` float32 on the target grid;
see :mod:`napari_cvdm.data.datasets` for the conventions. No Qt or napari imports;
torch is imported only by the batch functions.
"""

from ..physics.optics import bin_pixels, upsample
from .datasets import (
    TASKS,
    DataError,
    ImagePair,
    TaskSpec,
    check_image,
    get_task,
    load_pair_folders,
    make_loader,
    make_pair,
    make_validation_set,
    normalize_pair,
    pairs_from_arrays,
    prepare_input,
    random_dihedral,
    random_patch,
    read_planes,
    split_by_image,
)
from .normalize import Normalizer
from .simulate import (
    STRUCTURE_KINDS,
    QPISample,
    QPISimulationConfig,
    SimulatedPairs,
    SRSample,
    SRSimulationConfig,
    natural_image_names,
    phase_object_stack,
    qpi_source_image,
    render_structure,
    simulate_qpi,
    simulate_sr,
    write_simulated_folders,
)

__all__ = [
    "STRUCTURE_KINDS",
    "TASKS",
    "DataError",
    "ImagePair",
    "Normalizer",
    "QPISample",
    "QPISimulationConfig",
    "SRSample",
    "SRSimulationConfig",
    "SimulatedPairs",
    "TaskSpec",
    "bin_pixels",
    "check_image",
    "get_task",
    "load_pair_folders",
    "make_loader",
    "make_pair",
    "make_validation_set",
    "natural_image_names",
    "normalize_pair",
    "pairs_from_arrays",
    "phase_object_stack",
    "prepare_input",
    "qpi_source_image",
    "random_dihedral",
    "random_patch",
    "read_planes",
    "render_structure",
    "simulate_qpi",
    "simulate_sr",
    "split_by_image",
    "upsample",
    "write_simulated_folders",
]
