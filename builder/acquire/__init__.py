"""Acquisition: tiles fetched from a source (ArcGIS, the offline Blue Marble, a folder, an
MBTiles file) on threads through the fetch ledger: ``harvest``, the colour ``atlas`` and the
aimed sampler, sampling regions and tile addresses, ``sources/``.

Imports the core and assign.
"""
