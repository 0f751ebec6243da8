"""Models: the CLIP backbone, pixel and transformer decoders, heads, losses and meta-architectures."""
