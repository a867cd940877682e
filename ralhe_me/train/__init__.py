"""Training, encoder side only (optimizers, the renderer): the codec's overfitting schedule
(``schedule``) and its image-domain refinement (``render_refine``), which share the rounding
stand-ins of ``quantization``; and the 3DGS fitting the encoder runs before coding:
``finetune`` (attributes on the voxelized positions), ``fit`` (a model from a dataset) and
``densify`` (their adaptive density control). Modules are imported directly
(``from ralhe_me.train.schedule import train_attributes``)."""
