"""Operations on a library that are not acquisition: ``ingest`` of local images, ``synthesize``,
``verify`` and ``repair`` (with the inspections and problems they share), ``recover`` of a
broken tiles.db, and the coverage ``report``.

Imports the core and assign.
"""
