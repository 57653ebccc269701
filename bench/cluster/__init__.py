"""The namespace cluster: topology, pod processes, and a datapath programmed on it."""
