"""pytorch-cuda: build, test and publish reproducible PyTorch CUDA images."""
