"""Tags: zero-shot tagging against a vocabulary (auto.py, with the built-in vocabulary.txt) and XMP
sidecars written from the stored tags (sidecars.py)."""
