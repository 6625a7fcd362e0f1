"""Stage 1, the matrix: `versions.yaml` read strictly, validated and expanded into cells and images."""

from pytorch_cuda.matrix.model import (
    OS,
    VARIANTS,
    Cell,
    Cuda,
    Image,
    Matrix,
    load_matrix,
)

__all__ = ["OS", "VARIANTS", "Cell", "Cuda", "Image", "Matrix", "load_matrix"]
