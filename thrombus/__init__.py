"""thrombus: multi-center thrombus segmentation on stroke MRI.

The package holds all logic of the Snakemake workflow; every rule is a thin call into one of its modules.
"""

__version__ = "0.1.0"

#: Sequence names used everywhere: sample-sheet columns, file names, model channels.
SEQUENCES: tuple[str, ...] = ("swi", "t2star", "dwi", "adc", "flair", "t1")
