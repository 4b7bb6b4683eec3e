"""The card's pipeline: a candidate tile analysed (mean colour, LAB, pHash) and admitted to its
colour bucket or refused (cap, duplicate, near-duplicate), committed through the core's store.

Imports the core only.
"""
