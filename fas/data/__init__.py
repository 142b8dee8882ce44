"""Data: the CelebA-Spoof reader, face crops, the synthetic generator and the datamodule."""
