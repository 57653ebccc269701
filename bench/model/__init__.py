"""The Kubernetes objects kpbench programs and the inputs they are read from."""
