"""RD sweeps: scenes x codecs x rates as independent jobs (serial or on Ray).

``spec`` says what to run, ``scene`` prepares a scene once for all its jobs, ``jobs`` runs one
(scene, codec, rate) and ``store`` keeps its file and result row on disk so that a sweep can be
resumed; ``serial`` and ``ray_runner`` schedule the jobs, ``report`` rebuilds the tables and
figures from the rows.
"""
