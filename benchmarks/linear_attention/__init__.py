"""Linear attention kernels (kernels/linear_attention): chunk forward/backward and decode."""
