"""petloc: find the head of a cat or dog in a photo, and the experiment framework around it."""

__version__ = "0.1.0"
