"""petloc: find the head of a cat or dog in a photo, and the experiment framework around it.

import petloc
model = petloc.load_model("petloc@champion")   # or a .keras file, or models:/petloc/3
predictions = model.predict([rgb_image])         # label, score, box in the image's pixels

@petloc.register_backbone("mynet")                # your own backbone (petloc/plugins.py)
def mynet(image_size, width, weights): ...
"""

# Free of TensorFlow, as `import petloc` must stay.
from petloc.plugins import register_backbone

__version__ = "0.1.0"
__all__ = ["load_model", "register_backbone"]


def load_model(source: str):
    """A `Predictor` for a registered name, an MLflow model URI or a `.keras` file."""
    # Imported here, not above: `import petloc` (and `petloc --help`) stays free of TensorFlow.
    from petloc.tracking.registry import load_predictor

    return load_predictor(source)
