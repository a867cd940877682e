"""The decoder side of RALHE-ME: the native decoder (``native/``, C++17) that the ``ralhe-decode``
command, the C API, the WebAssembly module and the Python decoder share.

Decode side only: nothing here imports the encoder, optimizers or the renderer.
"""
