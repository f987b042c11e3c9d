"""Inference: a trained checkpoint applied to one subject's harmonised stack (`predict`), and the
threshold and minimum component size that turn its probability map into a mask, chosen on the
validation subjects after training (`postprocess`). `thrombus predict` is the command (`cli`).
"""
