"""The localiser network: backbones, heads, losses and metrics."""

from petloc.model.backbones import BACKBONES, build_backbone
from petloc.model.build import BOX_HEADS, SECOND_STAGES, ModelSpec, build_model, compile_model
from petloc.model.losses import BOX_LOSSES
from petloc.model.tta import TTA

__all__ = ["BACKBONES", "BOX_HEADS", "BOX_LOSSES", "ModelSpec", "SECOND_STAGES", "TTA", "build_backbone", "build_model", "compile_model"]
