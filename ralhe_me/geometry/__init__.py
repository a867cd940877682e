"""Geometry coding: lossless octree occupancy coding of voxel positions (``occupancy``) and
vector quantization of the covariance parameters (``covariance_vq``).

Modules are imported directly (``from ralhe_me.geometry.occupancy import encode_positions``)."""
