"""The decoder side of RALHE-ME, in one place: the container (``bitstream``), the header schema
and the reconstruction path that the encoder shares (``reconstruction``), the fixed-point
decoder weights (``weights``), the transmitted gain map (``gain_map``), the networks from
latents to attributes (``synthesis``) and the whole decode (``decoder``). The native decoder
(``native/``, C++17: the ``ralhe-decode`` command, the C API and the WebAssembly module)
mirrors these modules one for one.

Decode side only: nothing here imports the encoder, training, optimizers or the renderer.
"""
