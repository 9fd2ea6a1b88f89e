"""What each job runs: quantizers, INQ, GLUE data and metrics, the HF Trainer entry point.

Importing this package is cheap: torch and transformers load only in the modules that train.
"""
