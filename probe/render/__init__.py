"""Rendering of probe's results: contact sheets (sheets), matplotlib plots (plots), the HTML report.

Submodules are imported explicitly (``from probe.render.sheets import image_grid``) so that code
that only needs PIL does not pay for importing matplotlib.
"""
