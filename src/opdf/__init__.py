"""opdf: knowledge distillation with an over-parameterized (MPO) student.

During training each chosen weight matrix is a matrix product operator (MPO) with more parameters
than the matrix; after training the cores are merged back, so the deployed student is exactly as
small and fast as before (Zhan et al., NeurIPS 2024, arXiv 2411.06448).
"""

__version__ = "0.1.0"
