"""Measuring: scenario -> runners -> traffic and BPF probes."""
