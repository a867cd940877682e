"""The encoder side: a model to a ``.ralhe`` file (``encoder``), the baseline files
(``baseline_codec``), rendering importance (``importance``), the operating point a lambda
implies (``operating_point``) and rate control (a size or a PSNR instead of a lambda,
``rate_control``). The decoder side never imports from here."""
