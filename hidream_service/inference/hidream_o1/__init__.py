"""HiDream-O1-Image: our implementation of the official release on transformers 5.x.

geometry.py and recipes.py are pure Python (the API process reads them); model.py, sequence.py,
sampling.py, pixels.py, pipeline.py and tiny.py need torch and transformers (workers only).
"""
