"""Evaluation against other codecs: ``peers`` runs the formats people ship (SPZ, SOG, SuperSplat's
compressed PLY) so RALHE's sizes and decode times can be put beside theirs."""
