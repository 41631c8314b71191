"""The async SDK: the low-level client and the high-level sandbox."""
