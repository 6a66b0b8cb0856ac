"""Models: the CLIP encoders (torch, and the ONNX image and text towers exported from it), the export cache,
the choice of precision from the CPU's features, and thresholds tuned per model.

Everything here loads torch or onnxruntime lazily, inside the functions that need them.
"""
