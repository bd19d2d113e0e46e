"""What people look at: figures and tables made from the pipeline's outputs."""
