"""Evaluation: rendering quality (``evaluation``, ``metrics``), rate-distortion comparisons
(``rd``, ``rd_summary``) and the formats people ship (``peers``: SPZ, SOG, SuperSplat's
compressed PLY) so RALHE's sizes and decode times can be put beside theirs."""
