"""RALHE-ME: learned hierarchical compression of 3D Gaussian Splatting models."""

__version__ = "0.1.0"
