"""OPDF inside other training engines (``opdf.integrations.transformers``: the HF Trainer).

Each integration imports its engine only when it is imported itself.
"""
