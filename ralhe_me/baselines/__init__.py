"""Baseline attribute codecs for comparison with RALHE: RAHT (as in GPCC-GS / MPEG G-PCC) and plain
scalar quantization, both with the same step rule and rANS entropy coding.  Modules are imported
directly (``from ralhe_me.baselines.attribute_codecs import encode_attributes``)."""
