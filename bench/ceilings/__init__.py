"""The ceilings every figure is compared with, measured on the same machine in the same run."""
