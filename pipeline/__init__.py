"""mmpr-forge: multimodal preference pairs (MMPR correctness, DropoutNTP, mDPO crops)."""
__version__ = "0.1.0"
