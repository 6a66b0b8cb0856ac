"""Text in photos: reading it (engine.py, the bundled PP-OCR models on onnxruntime) and the pass that reads the
indexed photos once per content (job.py). The text is stored and searched by store/text.py."""
