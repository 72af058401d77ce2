"""Files from their official locations: what is known (:mod:`.registry`, ``maft/assets/downloads.yaml``),
verified and resumable downloads and the weight caches (:mod:`.verified`), and the dataset recipes that
download, unpack and prepare a benchmark (:mod:`.dataset_recipes`). ``maft download`` is their command line.
"""
