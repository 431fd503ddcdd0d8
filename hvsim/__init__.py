"""hvsim: a simulated POWER6 LPAR with hypervisor-assisted dump."""
