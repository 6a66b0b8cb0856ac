"""Indexing: walk folders, decode photos safely, read their metadata and fingerprints, and run the index job.

The job (job.py) decides what changed (scan.py), decodes (images.py, metadata.py,
fingerprint.py), embeds through models/ and writes through store/.
"""
