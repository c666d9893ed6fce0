"""The walks: decodes of targets computed in feature space (``probe interpolate``, ``perturb``, ``map``).

:mod:`.interpolate`, :mod:`.perturb` and :mod:`.map` hold each command's ``run``; :mod:`.pipeline` the
glue they share (feature sets, target lists, reports); the geometry itself is :mod:`probe.geometry`. A walk
decodes through :func:`probe.workflows.decode.decode_into`: walks build on decode, nothing builds on walks.
"""
