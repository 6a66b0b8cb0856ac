"""clipsearch: search a photo library by meaning with CLIP, from the command line or Python."""

__version__ = "0.1.0"
