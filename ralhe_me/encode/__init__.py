"""Encoder-side tools built on :mod:`ralhe_me.encoder`: rate control (a size or a PSNR instead of a
lambda). The decoder side never imports from here."""
