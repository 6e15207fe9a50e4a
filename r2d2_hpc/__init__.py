"""r2d2_hpc: the R2D2 agent (Kapturowski et al., ICLR 2019) as an MPI batch job."""

__version__ = "0.1.0"
