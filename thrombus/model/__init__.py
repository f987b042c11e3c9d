"""The segmentation networks: UpAttLLSTM (a 2.5D attention recurrent U-Net), its ablations and a MONAI
baseline, all taking a slab of adjacent axial slices plus a per-sequence availability vector.

`build_model(ModelConfig(...))` is the one entry point; see `thrombus.model.network` for the data flow.
"""

from thrombus.model.config import ARCHITECTURES, DEFAULT_CHANNELS, ModelConfig
from thrombus.model.factory import build_model, count_parameters

__all__ = ["ARCHITECTURES", "DEFAULT_CHANNELS", "ModelConfig", "build_model", "count_parameters"]
