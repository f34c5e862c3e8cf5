"""The localiser network: backbones, heads, losses, metrics and the hyperparameters that shape them
(declared in `petloc.hyperparams`, free of TensorFlow, for the experiment schema)."""

from petloc import hyperparams
from petloc.hyperparams import Hyperparameters
from petloc.model.backbones import BACKBONES, REGISTERED, Pretrained, build_backbone
from petloc.model.build import build_model, compile_model, optimizer
from petloc.model.class_head import ClassHead, model_classes
from petloc.model.heads import BOX_HEADS, SECOND_STAGES
from petloc.model.losses import BOX_LOSSES, CLASS_WEIGHTS
from petloc.model.tta import TTA

__all__ = [
    "BACKBONES",
    "BOX_HEADS",
    "BOX_LOSSES",
    "CLASS_WEIGHTS",
    "REGISTERED",
    "SECOND_STAGES",
    "TTA",
    "ClassHead",
    "Hyperparameters",
    "Pretrained",
    "build_backbone",
    "build_model",
    "compile_model",
    "hyperparams",
    "model_classes",
    "optimizer",
]
