"""vlaedge: compress, export, profile and gate Vision-Language-Action robot policies for NVIDIA Jetson.

Importing the package is cheap: torch, onnxruntime, modelopt and tensorrt are imported by the stage
that needs them, so `vlaedge --help` works without them.
"""

__version__ = "0.1.0"
