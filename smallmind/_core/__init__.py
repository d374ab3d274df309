"""Compiled kernels. Import ``smallmind`` (which checks the CPU) before these modules."""
