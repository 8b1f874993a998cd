"""Data for multiplexed models: collators (:mod:`.collators`) and the shipped real corpora (:mod:`.corpora`).

Kept import-light on purpose: import the submodules you need (``from mux_plms.data.collators import
MLMCollator``); nothing heavy is imported here.
"""
