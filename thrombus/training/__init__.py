"""Training of the slab segmentation networks: gradual modality dropout (`gmd`) and the site-
heterogeneity augmentation it is scheduled with (`heterogeneity`); the loops come with the training step.
"""
