"""What the running kernel can do (features, minimal probes), and running in another kernel (VM)."""
