"""The LSF backend, a submitit plugin (entry-point group `submitit`, executor name `lsf`)."""

from jobs.lsf.lsf import LsfExecutor, LsfInfoWatcher, LsfJob, LsfJobEnvironment, lsf_target

__all__ = ["LsfExecutor", "LsfInfoWatcher", "LsfJob", "LsfJobEnvironment", "lsf_target"]
