"""A Hydra launcher for IBM Spectrum LSF: `hydra/launcher=submitit_lsf`.

A Hydra multirun goes to LSF as one job array (through quantsweep's submitit LSF plugin), as
hydra-submitit-launcher does for SLURM; the launcher waits for the jobs and returns their
results to Hydra. Installed with quantsweep (`pip install 'quantsweep[hydra]'`); Hydra finds it
in its `hydra_plugins` namespace.
"""
