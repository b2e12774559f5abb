"""Prompt to vector: the sentence-transformers encoder and its faster serving backends.

``encoder`` (the model, devices, batching), ``onnx`` (ONNX Runtime int8 export), ``static``
(model2vec distillation), ``select`` (which backend trains and serves), ``check`` (an
artifact's encoder signature), ``cache`` (on-disk embedding cache), ``batcher`` (the
gateway's micro-batcher).
"""
