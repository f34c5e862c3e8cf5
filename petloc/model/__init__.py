"""The localiser network: backbones, heads, losses and metrics."""

from petloc.model.backbones import BACKBONES, build_backbone
from petloc.model.build import ModelSpec, build_model, compile_model
from petloc.model.losses import BOX_LOSSES

__all__ = ["BACKBONES", "BOX_LOSSES", "ModelSpec", "build_backbone", "build_model", "compile_model"]
